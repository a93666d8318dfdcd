# syntax=docker/dockerfile:1
# cometd-broker: the broker and the contact-center API, with uvloop, the Redis engine and JWT support.
#   docker build -t cometd-broker .
#   docker run -p 8080:8080 -v cometd-data:/data cometd-broker        (README.md, "Docker")
ARG PYTHON_IMAGE=python:3.11-slim
ARG NODE_IMAGE=node:20-slim

# ---- desktop: the agent desktop's official CometD JS client, from the npm lock file (.dockerignore keeps a
# checkout's own node_modules out of the context)
FROM ${NODE_IMAGE} AS desktop
WORKDIR /src/channels/desktop
COPY channels/desktop/package.json channels/desktop/package-lock.json ./
RUN npm ci --no-audit --no-fund

# ---- build: the project's wheel and every dependency's, so the runtime stage needs no compiler or network.
# setup.py copies node_modules/cometd into the wheel as channels/desktop/vendor/cometd (the page at /).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE ./
COPY cometd_broker ./cometd_broker
COPY channels ./channels
COPY --from=desktop /src/channels/desktop/node_modules ./channels/desktop/node_modules
RUN pip wheel --wheel-dir /wheels ".[fast,redis,jwt]"

# ---- runtime
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted, not copied: they never become a layer of the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "cometd-broker[fast,redis,jwt]"
# A fixed numeric uid: Kubernetes' runAsNonRoot can verify it, and volume ownership is predictable.
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin broker \
    && mkdir /data && chown 10001:10001 /data
# The embedded SQLite stores live on the volume, so events (replay) and contact-center state survive
# a new container. With Redis, set COMETD_BROKER_EVENT_LOG to the Redis URL too (README, "Docker").
ENV COMETD_BROKER_EVENT_LOG=/data/events.db \
    COMETD_BROKER_STATE_DB=/data/state.db \
    COMETD_BROKER_PORT=8080
WORKDIR /data
VOLUME /data
USER 10001:10001
EXPOSE 8080
# The slim image has no curl: Python asks /health (a non-2xx answer or no answer exits non-zero), over
# https when COMETD_BROKER_TLS_CERT is set (unverified: the certificate names the service, not 127.0.0.1).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as u; tls = bool(os.environ.get('COMETD_BROKER_TLS_CERT')); u.urlopen(('https' if tls else 'http') + '://127.0.0.1:' + os.environ.get('COMETD_BROKER_PORT', '8080') + '/health', timeout=4, context=ssl._create_unverified_context() if tls else None)"]
# Stopping: `docker stop` sends STOPSIGNAL, then SIGKILLs the container after its grace (`-t`, default 10 s).
# On SIGTERM `serve` answers every held connect and stops; with COMETD_BROKER_WORKERS > 1 its supervisor
# waits for the workers at most COMETD_BROKER_STOP_TIMEOUT (default 8 s), then kills a hung one and exits,
# inside that grace. Keep the grace (docker stop -t, compose stop_grace_period, Kubernetes
# terminationGracePeriodSeconds) at least the stop timeout + 2 s when raising either (README, "Docker").
STOPSIGNAL SIGTERM
CMD ["cometd-broker", "serve", "--host", "0.0.0.0"]
