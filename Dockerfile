# The serving image: `python -m factory_mas` with the committed models and nothing for
# training (TensorFlow, scikit-learn live in the `train` extra), testing or compiling.
# Build: docker build -t factory_mas .    Run: docker run -p 8000:8000 -v factory_data:/data factory_mas
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY factory_mas ./factory_mas
# No extras: the dependency list in pyproject.toml is the serving set, so it is not
# repeated here. Every dependency comes as a manylinux wheel (checked on x86_64): no compiler.
# The installer itself is not needed to serve (26 MB).
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
# Modbus' default 502 needs root; 5020 keeps the server up as an unprivileged user (map
# it back with -p 502:5020 where a control system insists on 502). The models are read
# from /app/artifacts: the installed package would look beside site-packages.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/app \
    FACTORY_DATA_DIR=/data \
    FACTORY_MODELS_DIR=/app/artifacts \
    FACTORY_SCADA_MODBUS_PORT=5020
# A fixed numeric id, so a volume's ownership means the same in every rebuild.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app \
    && mkdir /data \
    && chown app:app /data
# Railway mounts its volumes root-owned and, with RAILWAY_RUN_UID=0, starts us as root:
# then hand the data dir to the app user and drop to it (setpriv is in util-linux, part
# of every Debian). Started as the app user, it only says what to do about a read-only dir.
# hadolint ignore=SC2016
RUN printf '%s\n' \
        '#!/bin/sh' \
        'set -e' \
        'dir="${FACTORY_DATA_DIR:-/data}"' \
        'if [ "$(id -u)" = 0 ]; then' \
        '    mkdir -p "$dir"' \
        '    chown -R 10001:10001 "$dir"' \
        '    exec setpriv --reuid=10001 --regid=10001 --clear-groups -- "$@"' \
        'fi' \
        'if [ -d "$dir" ] && [ ! -w "$dir" ]; then' \
        '    echo "factory_mas: $dir is not writable by uid $(id -u); on Railway set RAILWAY_RUN_UID=0" >&2' \
        '    exit 1' \
        'fi' \
        'exec "$@"' \
        > /usr/local/bin/factory-entrypoint \
    && chmod 0755 /usr/local/bin/factory-entrypoint
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# Root-owned and read-only for the app: models change by a new image, not at run time.
COPY artifacts ./artifacts
COPY settings.toml ./
USER 10001:10001
# HTTP and WebSocket; then OPC UA, Modbus TCP and DNP3 for control systems.
EXPOSE 8000 4840 5020 20000
# No VOLUME line: Railway refuses Dockerfiles with one; `-v NAME:/data` works without it.
# /health answers 200 once the store and the agents are up (503 before); slim has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/usr/local/bin/factory-entrypoint"]
CMD ["python", "-m", "factory_mas"]
