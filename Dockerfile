# syntax=docker/dockerfile:1
# The analytics service image: one image, every role (`analytics api|worker|scheduler|init`).
#
#   docker build -t analytics-service .
#   docker run --rm -p 8083:8083 analytics-service            # the API (default CMD)
#   docker run --rm analytics-service worker --queues maintenance
#
# Stage 1 builds a virtualenv with the build tools; stage 2 is slim and gets only the venv
# and config/ (no compiler, no pip cache, no sources beyond the installed package).

ARG PYTHON_VERSION=3.12

# ---- build ---------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS build

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv
RUN python -m venv "$VIRTUAL_ENV"
ENV PATH="/opt/venv/bin:$PATH"

WORKDIR /src
# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir -p src/analytics && touch src/analytics/__init__.py \
 && pip install --upgrade pip setuptools wheel \
 && pip install . \
 && pip uninstall -y analytics-service
COPY src ./src
# Drop the placeholder build's leftovers, install the real package, byte-compile it once
# (the runtime user cannot write next to the sources).
RUN rm -rf build src/*.egg-info \
 && pip install --no-deps . \
 && python -m compileall -q /opt/venv/lib

# ---- runtime -------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime

LABEL org.opencontainers.image.title="analytics-service" \
      org.opencontainers.image.description="Product-analytics event service (Falcon + Dramatiq)"

ARG UID=10001
RUN groupadd --system --gid "$UID" analytics \
 && useradd --system --uid "$UID" --gid analytics --home-dir /var/lib/analytics \
      --shell /usr/sbin/nologin analytics \
 && mkdir -p /var/lib/analytics \
 && chown analytics:analytics /var/lib/analytics

COPY --from=build /opt/venv /opt/venv
COPY --chown=root:root config /app/config

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ANALYTICS_HOST=0.0.0.0 \
    ANALYTICS_PORT=8083 \
    ANALYTICS_DATA_DIR=/var/lib/analytics \
    ANALYTICS_GUNICORN_CONFIG=/app/config/gunicorn.conf.py \
    ANALYTICS_LOG_FORMAT=json

WORKDIR /var/lib/analytics
VOLUME ["/var/lib/analytics"]
USER analytics:analytics
EXPOSE 8083

# No curl in slim images: the standard library asks /health (any non-2xx or no answer fails).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('ANALYTICS_PORT', '8083'), timeout=4)"]

ENTRYPOINT ["analytics"]
CMD ["api"]
