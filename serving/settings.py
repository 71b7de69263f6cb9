"""Every setting of the service, in one place.

Each setting is a CLI flag (``--batch-size``) and an environment variable of the same
name in upper case (``BATCH_SIZE``). Precedence: flag > environment > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image

# A request's keys and its handler outlive its deadline (--client-timeout) by this much: time to
# send the answer. Drains, waiting markers and answer retries all count from it.
ANSWER_GRACE_SECONDS = 5.0
# The longest a job's long-poll (GET /jobs/<id>?wait=S) may wait; longer asks are a 400.
LONGEST_JOB_WAIT_SECONDS = 30.0

# The choices other modules check against: how uploads are fitted to a model's input, what runs
# the model, at what precision.
RESIZE_MODES = ("crop", "squash")
RUNTIMES = ("tensorflow", "openvino")
PRECISIONS = ("f32", "bf16", "int8")
LOG_FORMATS = ("text", "json")
# --calibrate-on-traffic: fewer images leave the INT8 guard too few to judge by (one in three is
# held out, 20 confident ones needed); more buy the calibration nothing and cost memory.
TRAFFIC_IMAGES_RANGE = (60, 5000)
# A served model's name and version: queue names, job ids and URLs carry them.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
VERSION = re.compile(r"[1-9][0-9]{0,8}")


@dataclasses.dataclass(frozen=True)
class Option:
    name: str
    kind: Callable[[str], Any]
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return self.name.upper()


# fmt: off
OPTIONS: tuple[Option, ...] = (
    Option("role", str, "all", "what this process runs: web + a model worker child, web only, worker only",
           ("all", "web", "worker")),
    Option("host", str, "127.0.0.1", "address the HTTP server binds to"),
    Option("port", int, 5000, "port the HTTP server listens on"),
    Option("web_threads", int, 4,
           "threads per web process that decode and resize uploaded images, off the event loop "
           "(connections are greenlets; more uploads than threads wait their turn)"),
    Option("redis_url", str, None,
           "Redis URL (redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, "
           "redis+cluster://, rediss+cluster://); unset: 127.0.0.1:6379 if it answers, "
           "else an embedded redis-server"),
    Option("redis_min_replicas", int, None,
           "replicas that must hold a job before its 202, and a batch's answers before they count "
           "(WAIT); unset: 1 for Sentinel and Cluster URLs, 0 (no WAIT) for one Redis"),
    Option("queue_name", str, "image_queue",
           "name of the queue: its keys are {NAME}, {NAME}:bulk, ..., one Cluster hash slot"),
    Option("batch_size", int, 8, "most images the worker runs in one model call "
           "(8: on 2 CPU cores larger batches gain ResNet50 under 5 percent and take 2-4x as long); "
           "left unset with --precision auto on OpenVINO, the worker may choose fewer by measuring"),
    Option("batch_latency_ms", float, 0.0,
           "with --precision auto: the longest model call the worker may choose a batch size for, "
           "in ms (0: no bound; batches of 1 are always allowed)"),
    Option("batch_wait_ms", float, 5.0,
           "longest wait for more images once one has arrived; ends as soon as the batch is full"),
    Option("client_timeout", float, 10.0, "seconds a request waits for its result before 504"),
    Option("redis_timeout", float, 1.0,
           "seconds any Redis call but the wait for a result may take before the request gets 503"),
    Option("result_ttl", int, 60, "seconds an unread result stays in Redis"),
    Option("max_queue_length", int, 256, "queued interactive images at which new requests get 503"),
    Option("job_timeout", float, 600.0,
           "seconds a job's images may wait to be computed; after that the job is expired and its "
           "queued images are dropped unrun"),
    Option("job_ttl", int, 3600, "seconds a finished job's result is kept"),
    Option("max_job_queue_length", int, 10_000, "queued bulk (job) images at which new jobs get 503"),
    Option("max_upload_bytes", int, 10 * 1024 * 1024, "largest request body accepted (413 above)"),
    Option("max_images_per_request", int, 32,
           "images one request may carry (400 above); each is its own queue message"),
    Option("max_image_pixels", int, 25_000_000,
           "largest image, width x height, refused (400) before it is decoded: a classifier sees "
           "224-600 pixels a side, and 25 MP takes a 6000x4000 camera photo"),
    Option("decode_memory_mb", int, 400,
           "decoded pixels one web process holds at once, shared by its threads; a large PNG "
           "waits for room (503 after 5 s)"),
    Option("max_connections", int, 1000,
           "open client connections one web process keeps; at the limit the longest-idle one is "
           "closed for a new one"),
    Option("idle_timeout", float, 5.0, "seconds an idle (kept-alive) client connection stays open"),
    Option("read_timeout", float, 30.0,
           "seconds a request's headers and body may take to arrive (slow clients are cut off; "
           "put nginx in front for slow uploads)"),
    Option("model", str, "auto",
           "resnet50, efficientnet_lite0, null, or a path to a .keras/.h5 classifier; "
           "auto: resnet50 with ImageNet weights when available, else efficientnet_lite0"),
    Option("model_name", str, None,
           "the name the model is served under (?model=NAME, /v2/models/NAME); unset: resnet50, "
           "efficientnet_lite0, null, or the model file's name (with --model-repository: --model)"),
    Option("model_version", str, None,
           "the version this worker serves (a whole number); unset: 1, or with --model-repository "
           "the newest version folder of --model"),
    Option("model_repository", str, None,
           "folder of models, one folder per model and one per version inside it "
           "(DIR/NAME/VERSION/model.keras, labels.txt, optional config.json); the worker serves "
           "--model NAME from it"),
    Option("default_model", str, None,
           "web: the model for requests that name none; unset: the only model served (with "
           "several, such a request is a 400 that lists them)"),
    Option("weights", str, "imagenet", "resnet50 weights: imagenet, none (random), or a .h5 path"),
    Option("labels", str, None, "labels file for a custom model (JSON list, JSON dict, .npy dict)"),
    Option("preprocess", str, "caffe", "input scaling for a custom model",
           ("caffe", "tf", "torch", "unit", "none")),
    Option("resize", str, "auto",
           "how an upload is fitted to the model input: crop (shorter side to input/0.875, centre "
           "crop, as ImageNet models are evaluated) or squash (the whole image stretched, as Keras "
           "trains from directories); auto: crop for the bundled ImageNet models, squash for yours",
           ("auto", *RESIZE_MODES)),
    Option("runtime", str, "auto",
           "what runs the Keras model: auto (OpenVINO when TensorFlow sees no GPU and OpenVINO "
           "imports, else TensorFlow), tensorflow, openvino", ("auto", *RUNTIMES)),
    Option("precision", str, "auto",
           "OpenVINO inference precision; auto: the fastest of f32, bf16 (where the CPU has it) and "
           "int8 (with --calibration-dir, if its guard passes), timed at start; int8: quantized "
           "with NNCF on --calibration-dir, served only if its guard passes",
           ("auto", *PRECISIONS)),
    Option("calibration_dir", str, None,
           "folder of images like the traffic, to calibrate --precision int8 on (one in three is "
           "held out to guard it)"),
    Option("calibrate_on_traffic", int, 0,
           "with --precision int8 or auto and no --calibration-dir: keep a uniform sample of this "
           "many distinct served images (in the worker's memory only; never sent or saved), "
           "quantize to INT8 on it in the background and switch to INT8 between two batches if "
           f"its guard passes ({TRAFFIC_IMAGES_RANGE[0]}-{TRAFFIC_IMAGES_RANGE[1]}; 0: off)"),
    Option("int8_min_agreement", float, 0.97,
           "INT8 serves only if its top-1 agrees with f32 on at least this fraction of the "
           "held-out images f32 is >= 0.5 sure of; else f32/bf16 serves (0: no guard, for timing "
           "random weights only)"),
    Option("model_cache", str, None,
           "folder for converted (OpenVINO) models, so a restart does not convert again; "
           "unset: $XDG_CACHE_HOME/keras-redis-server or ~/.cache/keras-redis-server"),
    Option("top_k", int, 5, "predictions returned per image"),
    Option("model_threads", int, 0,
           "threads for one model call (TensorFlow's intra-op pool, which also caps its inter-op "
           "pool at 2; OpenVINO's inference threads); 0: one per core"),
    Option("heartbeat_ttl", float, 10.0, "seconds a silent worker counts as alive"),
    Option("log_level", str, "INFO", "logging level", ("DEBUG", "INFO", "WARNING", "ERROR")),
    Option("log_format", str, "text",
           "log lines as text, or one JSON object a line (the request line's fields as keys)",
           LOG_FORMATS),
    Option("tracing", str, "off",
           "OpenTelemetry traces of requests and batches, exported as the standard OTEL_* variables "
           "say (OTLP/HTTP by default); OTEL_SDK_DISABLED=true keeps it off", ("on", "off")),
    Option("trace_sample_ratio", float, 1.0,
           "share of new traces recorded (0 to 1); a request continuing a sampled traceparent is "
           "always recorded, and so is a batch serving a recorded request"),
    Option("auth", str, "none",
           "none: anyone who reaches the port may use it; keys: every route but the health probes "
           "and /metrics needs an API key (python -m serving.tenants add), with its tenant's limits",
           ("none", "keys")),
)
# fmt: on


@dataclasses.dataclass(frozen=True)
class Settings:
    role: str
    host: str
    port: int
    web_threads: int
    redis_url: str | None
    redis_min_replicas: int | None
    queue_name: str
    batch_size: int
    batch_latency_ms: float
    batch_wait_ms: float
    client_timeout: float
    redis_timeout: float
    result_ttl: int
    max_queue_length: int
    job_timeout: float
    job_ttl: int
    max_job_queue_length: int
    max_upload_bytes: int
    max_images_per_request: int
    max_image_pixels: int
    decode_memory_mb: int
    max_connections: int
    idle_timeout: float
    read_timeout: float
    model: str
    model_name: str | None
    model_version: str | None
    model_repository: str | None
    default_model: str | None
    weights: str
    labels: str | None
    preprocess: str
    resize: str
    runtime: str
    precision: str
    calibration_dir: str | None
    calibrate_on_traffic: int
    int8_min_agreement: float
    model_cache: str | None
    top_k: int
    model_threads: int
    heartbeat_ttl: float
    log_level: str
    log_format: str
    tracing: str
    trace_sample_ratio: float
    auth: str
    # The options set by a flag or the environment, not left to their defaults: where the
    # service may choose a value itself (the batch size under --precision auto), a set one wins.
    given: frozenset[str] = frozenset()

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def request_lifetime(self) -> float:
        """Longest a request can be in flight: its deadline plus the time to send its answer."""
        return self.client_timeout + ANSWER_GRACE_SECONDS

    @property
    def longest_web_wait(self) -> float:
        """The longest a web handler blocks in Redis on purpose: an answer or a long-poll. The
        blocking client's socket timeout is derived from it (serving/queue/connection.py)."""
        return max(self.client_timeout, LONGEST_JOB_WAIT_SECONDS)


class SettingsError(ValueError):
    """A setting's value cannot be used."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Redis-queued, batching Keras image classification over HTTP.",
        epilog="Every flag can also be set by the environment variable of the same name "
        "in upper case, e.g. --batch-size / BATCH_SIZE.",
    )
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.name,
            type=option.kind,
            default=None,
            choices=option.choices,
            metavar=option.env_var,
            help=f"{option.help} (default: {'unset' if option.default is None else option.default})",
        )
    return parser


def _from_env(option: Option, environ: Mapping[str, str]) -> Any:
    raw = environ.get(option.env_var)
    if raw is None or raw == "":
        return None
    try:
        value = option.kind(raw)
    except ValueError as exc:
        raise SettingsError(f"{option.env_var}={raw!r} is not a valid {option.kind.__name__}") from exc
    if option.choices and value not in option.choices:
        raise SettingsError(f"{option.env_var}={raw!r} must be one of {', '.join(option.choices)}")
    return value


# 0 means none, or the default
ZERO_ALLOWED = frozenset(
    {
        "batch_wait_ms",
        "batch_latency_ms",
        "model_threads",
        "trace_sample_ratio",
        "redis_min_replicas",
        "int8_min_agreement",
        "calibrate_on_traffic",
    }
)


def _validate(settings: Settings) -> None:
    for option in OPTIONS:
        value = getattr(settings, option.name)
        if value is None:
            continue
        if option.kind in (int, float) and (value < 0 or (value == 0 and option.name not in ZERO_ALLOWED)):
            raise SettingsError(f"{option.name} must be positive, got {value}")
    for name in ("model_name", "default_model"):
        value = getattr(settings, name)
        if value is not None and not MODEL_NAME.fullmatch(value):
            raise SettingsError(
                f"{name} is 1-64 letters, digits, '_' or '-', starting with a letter or digit; got {value!r}"
            )
    if settings.model_version is not None and not VERSION.fullmatch(settings.model_version):
        raise SettingsError(f"model_version is a whole number from 1, got {settings.model_version!r}")
    if not 0 <= settings.trace_sample_ratio <= 1:  # NaN fails this too
        raise SettingsError(f"trace_sample_ratio is a share from 0 to 1, got {settings.trace_sample_ratio}")
    _validate_traffic_calibration(settings)
    # Pillow refuses images beyond twice its own MAX_IMAGE_PIXELS whatever we allow: a higher
    # limit would be a promise the decoder breaks.
    decoder_cap = 2 * (Image.MAX_IMAGE_PIXELS or 0) or settings.max_image_pixels
    if settings.max_image_pixels > decoder_cap:
        raise SettingsError(
            f"max_image_pixels is {settings.max_image_pixels}; the image decoder refuses "
            f"more than {decoder_cap}"
        )


def _validate_traffic_calibration(settings: Settings) -> None:
    images = settings.calibrate_on_traffic
    if not images:
        return
    low, high = TRAFFIC_IMAGES_RANGE
    if not low <= images <= high:
        raise SettingsError(f"calibrate_on_traffic is {low} to {high} images (or 0: off), got {images}")
    if settings.calibration_dir:
        raise SettingsError("calibrate_on_traffic and calibration_dir both calibrate INT8: give one")
    if settings.precision not in ("int8", "auto"):
        raise SettingsError(
            "calibrate_on_traffic quantizes to INT8: it needs precision int8 or auto, "
            f"not {settings.precision}"
        )


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve every option: CLI flag, then environment variable, then default."""
    environ = os.environ if environ is None else environ
    flags = vars(build_parser().parse_args([] if argv is None else list(argv)))
    values = {}
    given = set()
    for option in OPTIONS:
        value = flags[option.name]
        if value is None:
            value = _from_env(option, environ)
        if value is not None:
            given.add(option.name)
        values[option.name] = option.default if value is None else value
    settings = Settings(**values, given=frozenset(given))
    _validate(settings)
    return settings


def markdown_table() -> str:
    """The README's table of settings, written from OPTIONS: ``python settings.py``."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for option in OPTIONS:
        default = "(unset)" if option.default is None else f"`{option.default}`"
        choices = f" ({', '.join(option.choices)})" if option.choices else ""
        rows.append(f"| `{option.flag}` | `{option.env_var}` | {default} | {option.help}{choices} |")
    return "\n".join(rows)
