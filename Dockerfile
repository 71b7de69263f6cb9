# One image for every role: docker run IMAGE --role web|worker|all (see deploy/entrypoint.sh).
#
#   docker build -t keras-redis-server:0.2.0 .
#
# Stage 1 installs the pinned requirements into /opt/venv with deploy/install.sh (the same
# script CI runs); stage 2 copies that venv and the code onto a clean python:3.11-slim, with no
# build tools, and runs as an unprivileged user.

FROM python:3.11-slim AS install
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements.txt ./
COPY deploy/install.sh deploy/
RUN sh deploy/install.sh /opt/venv

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
COPY --from=install /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root . .
# In a container the server listens on every interface of the container's own network; what
# reaches it is decided by the ports you publish (compose) or the Service (Kubernetes).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_CACHE=/home/app/.cache/keras-redis-server
USER app
# OpenVINO's documented telemetry opt-out for this user (the service also stubs it out itself).
RUN opt_in_out --opt_out >/dev/null
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s CMD ["python", "deploy/healthcheck.py"]
ENTRYPOINT ["sh", "deploy/entrypoint.sh"]
CMD ["--role", "all"]
