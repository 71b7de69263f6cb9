"""The container image, compose.yaml and the Kubernetes manifests: they render, validate offline
against the Kubernetes schemas, and say what settings.py and the README say."""

from __future__ import annotations

import re
import shutil
import subprocess
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from serving.queue import QueueKeys
from serving.queue.catalogue import model_queue_name
from serving.queue.embedded import DEFAULT_URL
from serving.queue.messages import BULK
from serving.queue.sentinel import parse_sentinel_url
from serving.settings import load_settings
from tools.compose_nginx import compose_site

from .support import ROOT

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed: the manifests are not rendered"
)
DEFAULTS = load_settings([], environ={})
LONGEST_BATCH_SECONDS = 30  # a slow batch on a slow CPU: what a worker's grace period must also cover


def render(path) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in render(ROOT / "deploy" / "k8s")}


def settings_env() -> dict[str, str]:
    lines = (ROOT / "deploy" / "k8s" / "base" / "settings.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def container(objects, name: str) -> dict:
    return objects[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]


def env(container_spec: dict) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container_spec.get("env", [])}


def worker_lanes(deployment: dict) -> list[str]:
    """The two lists a worker Deployment's model version takes from: its queue's lanes."""
    spec = deployment["spec"]["template"]["spec"]["containers"][0]
    variables, args = env(spec), spec.get("args", [])
    name = variables.get("MODEL_NAME") or args[args.index("--model") + 1]
    lanes = QueueKeys(model_queue_name(DEFAULTS.queue_name, name, variables["MODEL_VERSION"]))
    return [lanes.lane("interactive"), lanes.lane(BULK)]


@needs_kubectl
def test_two_models_have_their_own_workers_and_scaled_objects_on_their_own_lanes():
    docs = render(ROOT / "deploy" / "k8s" / "overlays" / "two-models")
    by_kind = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    lanes = {}
    for name in ("worker", "worker-documents"):
        scaled = by_kind[("ScaledObject", name)]["spec"]
        assert scaled["scaleTargetRef"]["name"] == name
        listed = [t["metadata"]["listName"] for t in scaled["triggers"]]
        assert listed == worker_lanes(by_kind[("Deployment", name)])
        assert all(t["metadata"]["address"].startswith("redis.keras-server.svc") for t in scaled["triggers"])
        lanes[name] = listed
        kubernetes_validate.validate(by_kind[("Deployment", name)], "1.32", strict=True)
    assert set(lanes["worker"]).isdisjoint(lanes["worker-documents"])
    settings = by_kind[("ConfigMap", next(n for k, n in by_kind if k == "ConfigMap"))]["data"]
    assert settings["DEFAULT_MODEL"] == "imagenet"


@needs_kubectl
def test_every_built_in_object_validates_against_the_kubernetes_schemas(objects):
    kinds = sorted(kind for kind, _ in objects)
    assert {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ScaledObject",
        "TriggerAuthentication",
    } <= set(kinds)
    for doc in objects.values():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # KEDA's custom resources: checked field by field below
        kubernetes_validate.validate(doc, "1.32", strict=True)


@needs_kubectl
def test_the_scaled_object_has_what_kedas_redis_list_scaler_documents(objects):
    scaled = objects[("ScaledObject", "worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "worker" and ("Deployment", "worker") in objects
    assert 0 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    assert scaled["pollingInterval"] > 0 and scaled["cooldownPeriod"] > 0
    assert [t["metadata"]["listName"] for t in scaled["triggers"]] == worker_lanes(
        objects["Deployment", "worker"]
    )
    for trigger in scaled["triggers"]:
        assert trigger["type"] == "redis"
        metadata = trigger["metadata"]
        assert int(metadata["listLength"]) == DEFAULTS.batch_size  # a worker's batch of images per worker
        assert int(metadata["activationListLength"]) >= 0
        host, port = metadata["address"].rsplit(":", 1)
        assert host == f"redis.{objects[('Namespace', 'keras-server')]['metadata']['name']}.svc.cluster.local"
        assert int(port) == urlsplit(DEFAULT_URL).port
        assert trigger["authenticationRef"]["name"] == "keras-redis"
    auth = objects[("TriggerAuthentication", "keras-redis")]["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "password", "name": "keras-redis", "key": "password"}]


@needs_kubectl
def test_the_manifests_use_the_values_settings_py_uses(objects):
    values = settings_env()
    for name in ("QUEUE_NAME", "BATCH_SIZE", "CLIENT_TIMEOUT", "REDIS_TIMEOUT", "JOB_TIMEOUT"):
        assert type(getattr(DEFAULTS, name.lower()))(values[name]) == getattr(DEFAULTS, name.lower()), name
    config = next(doc for (kind, _), doc in objects.items() if kind == "ConfigMap")
    assert config["data"] == values
    default_url = urlsplit(DEFAULT_URL)
    for role in ("web", "worker"):
        spec = container(objects, role)
        assert spec["args"] == ["--role", role]
        url = urlsplit(env(spec)["REDIS_URL"])
        assert (url.hostname, url.port, url.path) == ("redis", default_url.port, default_url.path)
        assert spec["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    web = objects[("Deployment", "web")]["spec"]["template"]["spec"]
    worker = objects[("Deployment", "worker")]["spec"]["template"]["spec"]
    assert web["terminationGracePeriodSeconds"] >= DEFAULTS.request_lifetime
    assert worker["terminationGracePeriodSeconds"] >= DEFAULTS.request_lifetime + LONGEST_BATCH_SECONDS
    probes = container(objects, "web")
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert int(values["PORT"]) == probes["ports"][0]["containerPort"]
    redis_port = objects[("Service", "redis")]["spec"]["ports"][0]["port"]
    assert redis_port == default_url.port


@needs_kubectl
def test_the_example_overlay_renders_with_its_secret(tmp_path):
    shutil.copytree(ROOT / "deploy" / "k8s", tmp_path / "k8s")
    (tmp_path / "k8s" / "overlays" / "example" / "redis.env").write_text("password=rendered-in-a-test\n")
    docs = render(tmp_path / "k8s" / "overlays" / "example")
    secret = next(doc for doc in docs if doc["kind"] == "Secret")
    assert secret["metadata"]["name"] == "keras-redis" and secret["metadata"]["namespace"] == "keras-server"
    deployments = [doc for doc in docs if doc["kind"] == "Deployment"]
    for doc in deployments:
        for item in doc["spec"]["template"]["spec"]["containers"][0].get("env", []):
            if "secretKeyRef" in item.get("valueFrom", {}):
                assert item["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
        kubernetes_validate.validate(doc, "1.32", strict=True)
    images = {doc["spec"]["template"]["spec"]["containers"][0]["image"] for doc in deployments}
    assert "registry.example.com/keras-redis-server:0.2.0" in images


@needs_kubectl
def test_an_overlay_in_another_namespace_points_keda_at_its_redis(tmp_path):
    shutil.copytree(ROOT / "deploy" / "k8s", tmp_path / "k8s")
    overlay = tmp_path / "k8s" / "overlays" / "example"
    (overlay / "redis.env").write_text("password=rendered-in-a-test\n")
    kustomization = overlay / "kustomization.yaml"
    text = kustomization.read_text()
    kustomization.write_text(text.replace("namespace: keras-server", "namespace: team-a"))
    scaled = next(doc for doc in render(overlay) if doc["kind"] == "ScaledObject")
    assert scaled["metadata"]["namespace"] == "team-a"
    addresses = {trigger["metadata"]["address"] for trigger in scaled["spec"]["triggers"]}
    assert addresses == {"redis.team-a.svc.cluster.local:6379"}


def test_compose_names_the_images_ports_and_commands_the_readme_documents():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "web1", "web2", "worker1", "worker2", "nginx"}
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Containers: one host") : readme.index("### Kubernetes")]
    for name, service in services.items():
        row = re.search(rf"^\| `{name}` \| `([^`]+)` \| (.*?) \|", section, re.MULTILINE)
        assert row, f"README documents no row for {name}"
        assert row.group(1) == service["image"], name
        command = " ".join(service.get("command", []))
        if name.startswith(("web", "worker")):
            assert f"`{command}`" in row.group(2), name
    assert services["nginx"]["ports"] == ["127.0.0.1:8080:8080"] and "127.0.0.1:8080" in section
    redis_command = services["redis"]["command"]
    assert "--requirepass" in redis_command and redis_command[redis_command.index("--save") + 1] == ""
    assert "REDIS_PASSWORD" in services["web1"]["environment"]["REDIS_URL"]
    assert "docker compose up" in readme


def test_compose_nginx_is_the_one_host_site_with_the_compose_upstreams():
    generated = (ROOT / "deploy" / "compose" / "nginx.conf").read_text()
    assert generated == compose_site((ROOT / "deploy" / "nginx.conf").read_text()), (
        "run python tools/compose_nginx.py"
    )


def test_the_image_is_slim_unprivileged_checked_and_installed_by_the_tested_script():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = dict(
        (name, base) for base, name in re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, re.MULTILINE)
    )
    assert stages == {
        "install-web": "python:3.11-slim",
        "install-full": "python:3.11-slim",
        "runtime": "python:3.11-slim",
        "web": "runtime",
        "full": "runtime",
    }
    assert re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.MULTILINE)[-1] == "full"  # the default
    assert "RUN sh deploy/install.sh /opt/venv requirements-web.txt" in dockerfile
    assert "RUN sh deploy/install.sh /opt/venv requirements.txt" in dockerfile
    assert "COPY --from=install-web /opt/venv /opt/venv" in dockerfile
    assert "COPY --from=install-full /opt/venv /opt/venv" in dockerfile
    for target in ("web", "full"):
        final = dockerfile.split(f"FROM runtime AS {target}\n")[1].split("\nFROM ")[0]
        assert re.search(r"^USER app$", final, re.MULTILINE), target
        assert not re.search(r"apt-get|build-essential|gcc", final), "no build tools in a final stage"
    runtime = dockerfile.split("AS runtime\n")[1].split("\nFROM ")[0]
    assert "HEALTHCHECK" in runtime and 'ENTRYPOINT ["sh", "deploy/entrypoint.sh"]' in runtime
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", ".env"} <= set(ignored)


def test_the_web_requirements_are_the_base_install_and_the_worker_extra_the_rest():
    """requirements-web.txt pins what `pip install .[web]` installs; requirements.txt adds the
    model runtimes that `.[worker]` adds."""
    import tomllib

    def names(lines):
        return {re.split(r"[=<>\[ ]", line.split("#")[0].strip(), maxsplit=1)[0].lower() for line in lines}

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    web = [line for line in (ROOT / "requirements-web.txt").read_text().splitlines() if "==" in line]
    full = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line]
    assert names(project["dependencies"]) == names(web)
    assert names(project["optional-dependencies"]["worker"]) == names(full) - {"openvino-telemetry"}
    assert "-r requirements-web.txt" in (ROOT / "requirements.txt").read_text()


@needs_kubectl
def test_the_sentinel_overlay_points_every_process_and_keda_at_the_sentinels():
    docs = render(ROOT / "deploy" / "k8s" / "overlays" / "sentinel")
    by_kind = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    assert ("Deployment", "redis") not in by_kind and (
        "Service",
        "redis",
    ) not in by_kind  # the chart's Redis serves
    for name in ("web", "worker"):
        spec = by_kind[("Deployment", name)]["spec"]["template"]["spec"]
        assert [c["name"] for c in spec["containers"]] == [name]
        variables = env(spec["containers"][0])
        url = variables["REDIS_URL"].replace("$(REDIS_PASSWORD)", "pw")
        parsed = parse_sentinel_url(url)
        assert parsed.service == "mymaster" and parsed.db == 0 and len(parsed.sentinels) == 3
        assert {port for _, port in parsed.sentinels} == {26379}
        assert parsed.connection_kwargs["password"] == "pw" and parsed.sentinel_kwargs["password"] == "pw"
        password = next(item for item in spec["containers"][0]["env"] if item["name"] == "REDIS_PASSWORD")
        assert password["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "redis-password"}
        kubernetes_validate.validate(by_kind[("Deployment", name)], "1.32", strict=True)
    scaled = by_kind[("ScaledObject", "worker")]["spec"]
    lanes = QueueKeys(model_queue_name(DEFAULTS.queue_name, "imagenet", "1"))
    assert [t["metadata"]["listName"] for t in scaled["triggers"]] == [
        lanes.lane("interactive"),
        lanes.lane(BULK),
    ]
    for trigger in scaled["triggers"]:
        # KEDA's redis-sentinel scaler: addresses (comma list), sentinelMaster, listName, listLength
        assert trigger["type"] == "redis-sentinel" and trigger["authenticationRef"] == {"name": "keras-redis"}
        metadata = trigger["metadata"]
        assert set(metadata) == {
            "addresses",
            "sentinelMaster",
            "listName",
            "listLength",
            "activationListLength",
            "databaseIndex",
        }
        assert metadata["sentinelMaster"] == "mymaster" and int(metadata["listLength"]) == DEFAULTS.batch_size
        addresses = [a.strip() for a in metadata["addresses"].split(",")]
        assert len(addresses) == 3 and all(
            a.endswith(".keras-server.svc.cluster.local:26379") for a in addresses
        )
    auth = by_kind[("TriggerAuthentication", "keras-redis")]["spec"]["secretTargetRef"]
    assert {(ref["parameter"], ref["name"], ref["key"]) for ref in auth} == {
        ("password", "redis", "redis-password"),
        ("sentinelPassword", "redis", "redis-password"),
    }
