"""Several models and versions behind one deployment: routing by name and version, a model
repository, rollouts, each version's own lanes. Real Redis, real Keras models, real worker threads
(each worker loads its version from a repository folder, as `--model-repository` does)."""

from __future__ import annotations

import io
import itertools
import json
import random
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from harness.launch import on_queue, server_command
from harness.processes import ChildProcess, http_status
from serving.models import ModelUnavailable, load_classifier, repository
from serving.models.labels import imagenet_labels
from serving.queue import RedisQueue, open_queue
from serving.queue.catalogue import Catalogue, model_queue_name
from serving.queue.messages import INTERACTIVE, ModelInfo
from serving.web.app import create_app
from serving.worker.factory import from_repository
from serving.worker.loop import ModelWorker

from .support import (
    COLOURS,
    TESTDATA,
    build_colour_model,
    colour_image,
    colour_model_args,
    leftover_keys,
    make_settings,
    wait_until,
)

FRENCH = {"red": "rouge", "green": "vert", "blue": "bleu"}
_deployments = itertools.count(1)


@pytest.fixture(scope="module")
def model_repository(tmp_path_factory) -> Path:
    """colour versions 1 and 2 (the same weights: their answers differ only in the version they
    name), french version 1 (its own labels), and broken version 1 (not a model file)."""
    root = tmp_path_factory.mktemp("repository")
    model_path, _ = build_colour_model(tmp_path_factory.mktemp("colour-build"))
    for name, version, labels in (
        ("colour", "1", list(COLOURS)),
        ("colour", "2", list(COLOURS)),
        ("french", "1", [FRENCH[c] for c in COLOURS]),
    ):
        folder = root / name / version
        folder.mkdir(parents=True)
        shutil.copy(model_path, folder / "model.keras")
        (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    (root / "colour" / "config.json").write_text(json.dumps({"preprocess": "unit", "resize": "squash"}))
    (root / "french" / "config.json").write_text(json.dumps({"preprocess": "unit", "batch_size": 4}))
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.keras").write_bytes(b"this is not a Keras archive")
    (broken / "labels.txt").write_text("a\nb\n")
    return root


class Deployment:
    """A web app and worker threads on one deployment name, in-process."""

    def __init__(self, redis_server, model_repository: Path, **overrides):
        self.name = f"many{next(_deployments)}"
        self.repository = model_repository
        self.settings = make_settings(
            redis_url=redis_server.url,
            queue_name=self.name,
            model_repository=str(model_repository),
            batch_wait_ms=10,
            top_k=2,
            precision="f32",
            heartbeat_ttl=3.0,
            **overrides,
        )
        self.app = create_app(self.settings)
        self.workers: list[tuple[ModelWorker, threading.Thread]] = []

    def start_worker(self, model: str, version: str | None = None) -> ModelWorker:
        """Load ``model`` (at ``version``, else its newest) from the repository, as a worker does."""
        settings = from_repository(self.settings.replace(model=model, model_version=version))
        classifier = load_classifier(
            settings.model, labels=settings.labels, preprocess=settings.preprocess, resize=settings.resize
        )
        name = model_queue_name(self.name, settings.model_name, settings.model_version)
        queue = open_queue(self.settings.redis_url, name, call_timeout=5, longest_block=5)
        worker = ModelWorker(queue, classifier, settings)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        self.workers.append((worker, thread))
        return worker

    def stop(self, worker: ModelWorker, timeout: float = 30) -> None:
        worker.stop()
        thread = next(t for w, t in self.workers if w is worker)
        thread.join(timeout)
        assert not thread.is_alive(), "the worker did not stop"

    def close(self) -> None:
        for worker, _ in self.workers:
            worker.stop()
        for _, thread in self.workers:
            thread.join(30)

    def predict(self, colour: str, **query) -> tuple[int, dict]:
        data = {"image": (io.BytesIO(colour_image(colour)), "x.png")}
        response = self.app.test_client().post(
            "/predict", data=data, query_string=query, content_type="multipart/form-data"
        )
        return response.status_code, response.json


@pytest.fixture
def deployment(redis_server, model_repository):
    made = []

    def make(**overrides) -> Deployment:
        made.append(Deployment(redis_server, model_repository, **overrides))
        return made[-1]

    yield make
    for each in made:
        each.close()


def _ready(deployment: Deployment, model: str, version: str | None = None) -> bool:
    query = {"model": model, **({"version": version} if version else {})}
    return deployment.app.test_client().get("/readyz", query_string=query).status_code == 200


def test_the_repository_layout_is_read_with_its_configs(model_repository):
    assert repository.index(model_repository) == {"broken": ["1"], "colour": ["1", "2"], "french": ["1"]}
    newest = repository.locate(model_repository, "colour")
    assert newest.version == "2" and newest.preprocess == "unit" and newest.resize == "squash"
    french = repository.locate(model_repository, "french", "1")
    assert french.batch_size == 4 and french.labels_file.name == "labels.txt"
    for name, version, says in (
        ("nothing", None, "has no model 'nothing' (it has: broken, colour, french)"),
        ("colour", "3", "has no version 3 (it has: 1, 2)"),
        ("../etc", None, "is not a model name"),
    ):
        with pytest.raises(ModelUnavailable, match=says.replace("(", r"\(").replace(")", r"\)")):
            repository.locate(model_repository, name, version)


def test_a_broken_model_file_is_refused_with_a_clear_message(model_repository):
    settings = from_repository(make_settings(model_repository=str(model_repository), model="broken"))
    with pytest.raises(ModelUnavailable, match="cannot be loaded") as refused:
        load_classifier(settings.model, labels=settings.labels, preprocess=settings.preprocess)
    assert "broken/1/model.keras" in str(refused.value)


def test_two_models_at_once_answer_each_from_the_model_it_named(deployment, redis_server):
    """32 clients mixing two models (and a broken third that never started): every answer comes
    from the model it named, with that model's labels; nothing is left in Redis."""
    served = deployment()
    served.start_worker("colour", "1")
    served.start_worker("french")
    wait_until(lambda: _ready(served, "colour") and _ready(served, "french"), 60, "both models' workers")
    asks = [(random.Random(i).choice(["colour", "french"]), list(COLOURS)[i % 3]) for i in range(160)]

    def ask(item):
        model, colour = item
        return model, colour, served.predict(colour, model=model)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(ask, asks))
    wrong = [
        (model, colour, body)
        for model, colour, (status, body) in results
        if status != 200
        or body["model"]["name"] != model
        or body["predictions"][0]["label"] != (FRENCH[colour] if model == "french" else colour)
    ]
    assert wrong == [] and len(results) == 160
    print(f"\ntwo models, 32 clients: {len(results)} answered, 0 wrong")
    for worker, _ in served.workers:
        assert worker.queue.depth(INTERACTIVE) == 0
    served.close()
    client = RedisQueue(served.app.extensions["keras_serving"].queue.redis, served.name).redis
    assert leftover_keys(client, served.name) == []


def test_unknown_models_and_versions_are_404s_that_list_the_known_ones(deployment):
    served = deployment()
    served.start_worker("colour", "1")
    served.start_worker("french")
    wait_until(lambda: _ready(served, "colour") and _ready(served, "french"), 60, "both models' workers")
    status, body = served.predict("red", model="resnet9000")
    assert status == 404 and "colour, french" in body["error"]
    status, body = served.predict("red", model="colour", version="7")
    assert status == 404 and "it has: 1" in body["error"]
    # Two models and no --default-model: a request that names none must say which.
    status, body = served.predict("red")
    assert status == 400 and "colour, french" in body["error"]
    client = served.app.test_client()
    assert client.get("/v2/models/resnet9000").status_code == 404
    assert set(client.get("/v2/models/resnet9000").json) == {"error"}
    assert client.get("/v2/models/french/versions/1/ready").status_code == 200
    assert client.get("/readyz", query_string={"model": "nope"}).status_code == 404
    index = client.post("/v2/repository/index").json
    assert {(e["name"], e["version"], e["state"]) for e in index} == {
        ("colour", "1", "READY"),
        ("french", "1", "READY"),
    }
    listing = {m["name"]: m for m in client.get("/models").json["models"]}
    assert listing["colour"]["current"] == "1" and listing["french"]["versions"][0]["live"] is True


def test_the_default_model_answers_requests_that_name_none(deployment):
    served = deployment(default_model="french")
    served.start_worker("colour", "1")
    served.start_worker("french")
    wait_until(lambda: _ready(served, "colour") and _ready(served, "french"), 60, "both models' workers")
    status, body = served.predict("green")
    assert status == 200 and body["predictions"][0]["label"] == "vert"
    response = served.app.test_client().post(
        "/models/colour/predict", data={"image": (io.BytesIO(colour_image("blue")), "b.png")}
    )
    assert response.status_code == 200 and response.json["predictions"][0]["label"] == "blue"


def test_a_job_lives_in_its_model_versions_queue_and_its_id_finds_it(deployment):
    served = deployment()
    served.start_worker("french")
    wait_until(lambda: _ready(served, "french"), 60, "the french worker")
    client = served.app.test_client()
    data = {"image": (io.BytesIO(colour_image("red")), "r.png"), "model": "french"}
    job = client.post("/jobs", data=data, content_type="multipart/form-data").json
    assert job["id"].startswith("french.1.") and job["model"] == "french"
    done = client.get(f"/jobs/{job['id']}", query_string={"wait": 20}).json
    assert done["status"] == "done" and done["predictions"][0]["label"] == "rouge"
    assert done["model"]["version"] == "1"
    assert client.get("/jobs/colour.1." + job["id"].split(".")[-1]).status_code == 404  # another queue
    assert client.delete(f"/jobs/{job['id']}").status_code == 200


def test_a_dead_workers_batch_goes_back_to_its_own_models_lane(deployment, redis_server):
    """A worker of colour took a batch and died: colour's live worker requeues and answers it;
    french's lanes and worker never see it."""
    served = deployment(client_timeout=30)
    french = served.start_worker("french")
    wait_until(lambda: _ready(served, "french"), 60, "the french worker")
    colour_queue_name = model_queue_name(served.name, "colour", "1")
    # Before any colour worker: the web tier must know colour exists to queue for it.
    Catalogue(french.queue.redis, served.name).announce(
        ModelInfo("colour", (32, 32), 3), colour_queue_name, 1
    )
    colour_queue = french.queue.sibling(colour_queue_name)
    served.app.extensions["keras_serving"].models.state(fresh=True)
    answers: list = []
    waiting = threading.Thread(target=lambda: answers.append(served.predict("blue", model="colour")))
    waiting.start()
    wait_until(lambda: colour_queue.depth() == 1 or answers, 10, "the image to be queued for colour")
    assert not answers, answers
    # A worker takes it into its processing list and dies with no heartbeat left.
    taken = colour_queue.take("died-mid-batch", 8)
    assert len(taken) == 1 and colour_queue.depth() == 0
    assert french.queue.depth() == 0
    served.start_worker("colour", "1")  # its heartbeat loop requeues the dead worker's batch
    waiting.join(timeout=40)
    status, body = answers[0]
    assert status == 200 and body["model"]["name"] == "colour" and body["predictions"][0]["label"] == "blue"
    assert french.queue.depth() == 0


def test_a_rollout_under_load_answers_every_request_and_names_each_version(deployment):
    """Version 1 serving 16 clients; version 2 starts, and once warm and announced it is current
    (the newest live version); version 1 stops: it answers what its lanes hold, then leaves.
    Every request is answered (0 errors), each answer names the version that computed it, and
    requests sent after the switch reached every web server are answered by version 2."""
    served = deployment(client_timeout=20)
    v1 = served.start_worker("colour", "1")
    wait_until(lambda: _ready(served, "colour", "1"), 60, "version 1")
    results: list[tuple[float, int, str | None]] = []  # (sent at, status, version)
    stop = threading.Event()

    def client_loop(seed: int) -> None:
        colours = itertools.cycle(list(COLOURS)[seed % 3 :] + list(COLOURS)[: seed % 3])
        while not stop.is_set():
            sent = time.monotonic()
            status, body = served.predict(next(colours))
            results.append(
                (sent, status, (body.get("model") or {}).get("version") if status == 200 else None)
            )

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    served.start_worker("colour", "2")
    catalogue = Catalogue(v1.queue.redis, served.name)
    wait_until(lambda: catalogue.read().is_live("colour", "2"), 60, "version 2 to announce itself")
    switched = time.monotonic()
    # At once: web servers still route to version 1 until their next catalogue read (<= 1 s),
    # so its last worker must answer what reaches its lanes meanwhile.
    served.stop(v1)
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(30)
    statuses = [status for _, status, _ in results]
    late_v1 = [sent for sent, _, version in results if version == "1" and sent > switched + 1.5]
    print(
        f"\nrollout under load: {len(results)} requests, {statuses.count(200)} answered, "
        f"v1 {sum(v == '1' for *_, v in results)}, v2 {sum(v == '2' for *_, v in results)}"
    )
    assert statuses and set(statuses) == {200}, "every request answered"
    assert all(version in ("1", "2") for *_, version in results)
    assert late_v1 == [], "after the switch, version 2 answers"
    assert (
        served.app.test_client()
        .get("/readyz", query_string={"model": "colour"})
        .json["models"]["colour"]["current"]
        == "2"
    )


def test_a_pinned_version_and_a_canary_share_route_unversioned_requests(deployment):
    served = deployment()
    served.start_worker("colour", "1")
    served.start_worker("colour", "2")
    wait_until(lambda: _ready(served, "colour", "1") and _ready(served, "colour", "2"), 60, "both versions")
    catalogue = Catalogue(served.app.extensions["keras_serving"].queue.redis, served.name)
    catalogue.pin("colour", "1")
    directory = served.app.extensions["keras_serving"].models
    directory.state(fresh=True)
    assert {served.predict("red")[1]["model"]["version"] for _ in range(8)} == {"1"}
    catalogue.set_canary("colour", "2", 50)
    directory.state(fresh=True)
    versions = [served.predict("red")[1]["model"]["version"] for _ in range(40)]
    assert set(versions) == {"1", "2"}, "a canary of 50 % gets some of 40 requests, not all"
    status, body = served.predict("red", version="2")  # a named version is never split
    assert status == 200 and body["model"]["version"] == "2"
    catalogue.clear_canary("colour")
    catalogue.unpin("colour")


@pytest.mark.slow
def test_the_bundled_model_and_a_users_model_served_apart_by_separate_processes(
    redis_server, colour_model, serve, tmp_path
):
    """Production layout: one web process, a worker process of EfficientNet-Lite0 and one of the
    colour model; 32 clients mixing both. Every answer comes from the model it named, with its
    labels; none lost; nothing left behind."""
    web = serve("--role", "web", model=False, queue="twoproc", ready_path="/healthz")
    workers = [
        ChildProcess(
            server_command(*on_queue("worker", redis_server.url, "twoproc", *flags)),
            log_path=tmp_path / f"worker-{i}.log",
            name=f"worker-{i}",
        ).start()
        for i, flags in enumerate(
            [("--model", "efficientnet_lite0", "--precision", "f32"), colour_model_args(colour_model)]
        )
    ]
    photos = {p.name: p.read_bytes() for p in sorted(TESTDATA.glob("*.jpg"))} or {
        "red.png": colour_image("red")
    }
    try:
        for model in ("efficientnet_lite0", "colour"):
            wait_until(
                lambda model=model: http_status(f"{web.url}/readyz?model={model}", timeout=5) == 200,
                120,
                f"the {model} worker",
                lambda: [w.check_alive() for w in workers],
            )
        asks = [
            ("colour", c) if i % 2 else ("efficientnet_lite0", name)
            for i, (c, name) in enumerate(
                itertools.islice(zip(itertools.cycle(COLOURS), itertools.cycle(photos)), 96)
            )
        ]

        def ask(item):
            model, what = item
            data = colour_image(what) if model == "colour" else photos[what]
            response = requests.post(
                f"{web.url}/predict?model={model}", files={"image": ("x", data)}, timeout=60
            )
            return model, what, response.status_code, response.json()

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(ask, asks))
        imagenet = set(imagenet_labels())
        wrong = [
            (model, what, status)
            for model, what, status, body in results
            if status != 200
            or body["model"]["name"] != model
            or (model == "colour" and body["predictions"][0]["label"] != what)
            or (model != "colour" and body["predictions"][0]["label"] not in imagenet)
        ]
        assert wrong == [] and len(results) == 96
        if "shuttle.jpg" in photos:
            shuttle = next(body for model, what, _, body in results if what == "shuttle.jpg")
            assert shuttle["predictions"][0]["label"] == "space shuttle"
        print(f"\ntwo model processes, 32 clients: {len(results)} answered, 0 wrong")
    finally:
        for worker in workers:
            worker.stop()
    assert leftover_keys(redis.Redis.from_url(redis_server.url), "twoproc") == []


def test_a_broken_version_leaves_the_others_serving_and_the_page_offers_each_model(deployment):
    served = deployment()
    served.start_worker("colour", "1")
    served.start_worker("french")
    wait_until(lambda: _ready(served, "colour") and _ready(served, "french"), 60, "both models' workers")
    with pytest.raises(ModelUnavailable, match="cannot be loaded"):
        served.start_worker("broken")
    assert served.predict("red", model="french")[1]["predictions"][0]["label"] == "rouge"
    assert served.predict("red", model="colour")[1]["predictions"][0]["label"] == "red"
    page = served.app.test_client().get("/").get_data(as_text=True)
    assert '<select id="model" name="model">' in page
    assert '<option value="colour"' in page and '<option value="french"' in page
    answered = served.app.test_client().post(
        "/", data={"image": (io.BytesIO(colour_image("blue")), "b.png"), "model": "french"}
    )
    assert answered.status_code == 200 and "bleu" in answered.get_data(as_text=True)
