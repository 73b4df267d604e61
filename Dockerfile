# syntax=docker/dockerfile:1.7
#
# One image, three commands (the chart's contract; tests/deploy/test_dockerfile.py holds it):
#   the service      python -m service serve       (the default: CMD ["service", "serve"])
#   the operator     python -m berth_operator run  (args: ["berth_operator", "run"])
#   the migrations   python -m service migrate     (args: ["service", "migrate"])
#
# Build: DOCKER_BUILDKIT=1 docker build --build-arg REVISION="$(git rev-parse HEAD)" -t berth .
#
# No HEALTHCHECK: only one of the three commands serves HTTP (an image-wide check would mark
# the operator and a migration run unhealthy), and Kubernetes ignores it; the chart probes
# /api/v1/health/*, compose.yaml has its own check for the service.

# ---------------------------------------------------------------------------------------------
# builder: the virtual environment, from uv.lock, with the project installed as a wheel.
# The same Python image as the runtime stage: the venv's interpreter is a symlink into it.
FROM python:3.11.15-slim-bookworm AS builder

# The Makefile's uv series (0.13): it wrote uv.lock, so it reads it the same way.
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /bin/uv

# Bytecode compiled at install: the runtime filesystem is read-only (the chart), so nothing
# could be cached at start and every start would compile again (~2.5 s).
# Copy, not hardlink: the cache is a mount, the venv must not point into it.
# The image's own Python, never a downloaded one (the runtime stage has only the image's).
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app

# Dependencies first, from the lock alone: this layer is rebuilt only when pyproject.toml or
# uv.lock change, not on every source change. The tracing extra is in: it is switched on at
# run time (OTEL_EXPORTER_OTLP_ENDPOINT) and the service refuses to start if it is missing.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --locked --no-dev --no-editable --extra tracing --no-install-project

# Then the project, as a wheel (--no-editable): the venv holds the code and its compiled
# bytecode (migrations and templates included), so the runtime stage needs nothing else.
# README.md only because hatchling reads it for the package metadata.
COPY pyproject.toml uv.lock README.md ./
COPY service ./service
COPY operator/berth_operator ./operator/berth_operator
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --extra tracing

# ---------------------------------------------------------------------------------------------
# dev: only for skaffold's dev profile (`target: dev`). The sources stay at /app, installed
# editable and owned by the user, so the files skaffold syncs land where Python imports them
# and the chart's dev.reload (uvicorn --reload) picks them up. Never shipped: it keeps uv.
FROM builder AS dev
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --extra tracing \
    && groupadd --system --gid 10001 berth \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin berth \
    && chown -R 10001:10001 /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BERTH_HTTP__HOST=0.0.0.0
EXPOSE 8000
USER 10001:10001
ENTRYPOINT ["python", "-m"]
CMD ["service", "serve"]

# ---------------------------------------------------------------------------------------------
# runtime (the last stage, what `docker build` makes by default): the interpreter and the
# venv; no uv, no compilers, no dev dependencies, no sources.
FROM python:3.11.15-slim-bookworm AS runtime

# Numeric ids: Kubernetes' runAsNonRoot cannot check a user name (the chart runs 10001:10001).
# /app/data (the local tenant registry and SQLite files) belongs to the user, so that a
# volume mounted there (compose.yaml) starts writable; the rest of the image stays root's.
RUN groupadd --system --gid 10001 berth \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin berth \
    && install --directory --owner=10001 --group=10001 /app/data

WORKDIR /app

# Owned by root, read-only for the service: the code cannot be changed by what it runs.
COPY --from=builder /app/.venv /app/.venv

# The service binds 127.0.0.1 by default (right on a laptop, unreachable in a container).
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BERTH_HTTP__HOST=0.0.0.0

EXPOSE 8000

USER 10001:10001

ENTRYPOINT ["python", "-m"]
CMD ["service", "serve"]

# Last, so that a new commit changes only this metadata layer.
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="berth" \
      org.opencontainers.image.description="berth: a multi-tenant FastAPI service and its tenant operator (one image, three commands)" \
      org.opencontainers.image.source="https://github.com/berth-dev/berth" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# The commit the service reports (GET /api/v1/info); the chart may still override it.
ENV BERTH_COMMIT=${REVISION}
