"""The one Flask app factory: settings and the queue in ``app.extensions``, the API and the upload
page as blueprints, JSON errors, the request log and /metrics.

    gunicorn -c gunicorn.conf.py "run_keras_server:create_app()"
"""

from __future__ import annotations

from flask import Flask

from serving import tracing
from serving.images import MemoryBudget, warm_up_decoding
from serving.queue import DEFAULT_URL
from serving.queue.connection import open_queue
from serving.settings import Settings, load_settings
from serving.tenants.limits import TenantLimits
from serving.tenants.registry import TenantRegistry
from serving.web import auth, memory, metrics, multipart, request_log, responses
from serving.web.body import BufferedBody
from serving.web.cpu_threads import CpuThreads
from serving.web.model_directory import ModelDirectory
from serving.web.routes import api, jobs, ui, v2
from serving.web.services import EXTENSION, Services

FORM_PARTS = 64  # multipart parts a request may have: images, top_k, and room to spare


def create_app(settings: Settings | None = None) -> Flask:
    """The web tier, configured from the environment when no settings are given (gunicorn)."""
    settings = settings or load_settings([])
    tracing.configure(settings)  # once per process: a no-op unless --tracing on
    # Only the wait for a request's answers may block for long; every other call fails fast.
    queue = open_queue(
        settings.redis_url or DEFAULT_URL,
        settings.queue_name,
        call_timeout=settings.redis_timeout,
        longest_block=settings.longest_web_wait,
        min_replicas=settings.redis_min_replicas,
        waiters=settings.max_connections,  # each connection may be a request waiting in Redis
    )
    multipart.install()  # werkzeug's multipart decoder, minus its patterns compiled per request
    app = Flask(__name__)
    app.wsgi_app = BufferedBody(app.wsgi_app, settings.read_timeout, settings.max_upload_bytes * 4)  # type: ignore[method-assign]
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.config["MAX_FORM_PARTS"] = FORM_PARTS
    warm_up_decoding()  # before any decode thread runs: see its docstring
    budget = MemoryBudget(settings.decode_memory_mb * 2**20, release=memory.release_freed_memory)
    registry = TenantRegistry(queue.redis, settings.queue_name)
    app.extensions[EXTENSION] = Services(
        settings,
        queue,
        ModelDirectory(queue, settings.queue_name, settings.default_model),
        budget,
        CpuThreads(settings.web_threads),
        TenantLimits(queue.redis, registry.tenants_key),
    )
    request_log.register_request_log(app)
    metrics.register_metrics(app)
    responses.register_error_handlers(app)
    auth.register_auth(app, auth.KeyCache(registry) if settings.auth == "keys" else None)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(jobs.blueprint)
    app.register_blueprint(ui.blueprint)
    app.register_blueprint(v2.blueprint)
    return app
