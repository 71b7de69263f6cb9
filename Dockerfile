# Two images from one Dockerfile, both run with deploy/entrypoint.sh:
#
#   docker build -t keras-redis-server:0.2.0 .                          # full: --role web|worker|all
#   docker build --target web -t keras-redis-server-web:0.2.0 .         # web only: --role web
#
# The web image has no model runtime (requirements-web.txt: no TensorFlow, OpenVINO, Keras,
# h5py): the web tier only queues images in Redis and answers HTTP, it loads no model.
# Each install stage puts pinned requirements into /opt/venv with deploy/install.sh (the same
# script CI runs); the final stages copy that venv and the code onto a clean python:3.11-slim,
# with no build tools, and run as an unprivileged user. The full image is the last stage, so a
# plain `docker build .` still builds it.

FROM python:3.11-slim AS install-web
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements-web.txt ./
COPY deploy/install.sh deploy/
RUN sh deploy/install.sh /opt/venv requirements-web.txt

FROM python:3.11-slim AS install-full
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements.txt requirements-web.txt ./
COPY deploy/install.sh deploy/
RUN sh deploy/install.sh /opt/venv requirements.txt

# What both images share: the user, the environment, the entry point (the same layers in both).
FROM python:3.11-slim AS runtime
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
WORKDIR /app
# In a container the server listens on every interface of the container's own network; what
# reaches it is decided by the ports you publish (compose) or the Service (Kubernetes).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_CACHE=/home/app/.cache/keras-redis-server
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s CMD ["python", "deploy/healthcheck.py"]
ENTRYPOINT ["sh", "deploy/entrypoint.sh"]

FROM runtime AS web
COPY --from=install-web /opt/venv /opt/venv
COPY --chown=root:root . .
USER app
CMD ["--role", "web"]

FROM runtime AS full
COPY --from=install-full /opt/venv /opt/venv
COPY --chown=root:root . .
USER app
# OpenVINO's documented telemetry opt-out for this user (the service also stubs it out itself).
RUN opt_in_out --opt_out >/dev/null
CMD ["--role", "all"]
