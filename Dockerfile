# mixauth: one container, its SQLite database in the /data volume.
#   docker build -t mixauth .
#   docker run -d -p 2200:2200 -v mixauth-data:/data mixauth
# The README's Deployment section has the variables to set, podman's line and a compose example.

# Any Debian-like image with python3 (3.11 or newer) and its venv module; both stages use the same one.
ARG BASE_IMAGE=python:3.12-slim

# Stage 1: install mixauth and its dependencies into a virtual environment.
FROM ${BASE_IMAGE} AS build
# For builds behind a private package mirror, or from a local wheel directory (PIP_FIND_LINKS with
# PIP_NO_INDEX=1). Build arguments only: they end with this stage and are not in the runtime image.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
# pip compiles the bytecode here, so the runtime starts without compiling; pip itself is not shipped.
RUN python3 -m venv /opt/mixauth \
    && /opt/mixauth/bin/pip install '.[uvloop]' \
    && /opt/mixauth/bin/pip uninstall --yes --quiet pip setuptools

# Stage 2: the runtime, the base image plus the virtual environment and an unprivileged user.
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/mixauth \
    PATH=/opt/mixauth/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=2200 \
    METRICS_HOST=0.0.0.0 \
    DATA_DIR=/data
# A fixed uid and gid, so that a bind-mounted data directory can be prepared for it: chown 10001:10001 DIR.
RUN groupadd --gid 10001 mixauth \
    && useradd --uid 10001 --gid 10001 --no-log-init --home-dir /data --no-create-home --shell /usr/sbin/nologin mixauth \
    && mkdir /data && chown 10001:10001 /data && chmod 700 /data
COPY --from=build /opt/mixauth /opt/mixauth
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
# 2200: the API. 2201: GET /metrics alone (METRICS_PORT); publish it only towards the scraper, never
# through the reverse proxy, or set METRICS_TOKEN.
EXPOSE 2200 2201
# Healthy once /health/ready answers 200 (the database answers a query); standard library only, no curl.
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 CMD ["python3", "-m", "server.healthcheck"]
# SIGTERM: stop accepting, let requests in flight finish (bcrypt included), close the database, exit 0.
STOPSIGNAL SIGTERM
CMD ["python3", "-m", "server"]
