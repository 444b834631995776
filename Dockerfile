# mixauth: one container, SQLite in a volume. Build: docker build -t mixauth .
# Run:   docker run -p 2200:2200 -v mixauth-data:/data -e JWT_SECRET=... mixauth
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# For builds behind a private package mirror (or from a local wheel directory).
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/mixauth \
    PATH=/opt/mixauth/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
RUN python3 -m venv /opt/mixauth \
    && /opt/mixauth/bin/pip install --no-cache-dir '.[uvloop]' \
    && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin mixauth \
    && mkdir -p /data && chown mixauth /data && chmod 700 /data

ENV HOST=0.0.0.0 \
    PORT=2200 \
    DATA_DIR=/data
VOLUME ["/data"]
WORKDIR /data
USER mixauth
EXPOSE 2200
# Ready when the database answers; standard library only (no curl in the image).
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["python3", "-m", "server.healthcheck"]
# SIGTERM drains requests in flight, then closes the database.
STOPSIGNAL SIGTERM
CMD ["python3", "-m", "server"]
