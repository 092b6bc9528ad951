# polegw: the gateway image (also runs `polegw migrate`, `site import`, `simulate`).
#
#   docker build -t polegw .
#   docker run --rm -p 8000:8000 -e POLEGW_DATABASE_URL=... -e POLEGW_MQTT_URL=... polegw
#
# Stage 1 installs the project and its dependencies into a virtualenv; stage 2
# copies only that virtualenv onto a clean base, without pip's build leftovers.
# All dependencies ship manylinux wheels (psycopg[binary], orjson, ...), so no
# compiler is needed.

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# .dockerignore lets in only what the wheel is built from.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY simulators ./simulators
COPY devices ./devices
COPY migrations ./migrations
# `pip install .` (not editable, no dev extras): the profiles and migrations are
# installed as the polegw_devices / polegw_migrations packages.
RUN pip install . \
    && polegw --help > /dev/null


FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    POLEGW_API_HOST=0.0.0.0 \
    POLEGW_API_PORT=8000 \
    POLEGW_SPOOL_DIR=/var/lib/polegw/spool

# An unprivileged user owning the spool; a named volume mounted on the spool
# directory starts out with this ownership.
RUN groupadd --system --gid 10001 polegw \
    && useradd --system --uid 10001 --gid polegw --home-dir /var/lib/polegw \
        --shell /usr/sbin/nologin polegw \
    && mkdir -p /var/lib/polegw/spool \
    && chown -R polegw:polegw /var/lib/polegw

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /var/lib/polegw
VOLUME ["/var/lib/polegw/spool"]

EXPOSE 8000

# Liveness of the API; slim has no curl, so Python asks. urlopen raises (exit 1)
# on a refused connection, a timeout or a non-2xx answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('POLEGW_API_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["polegw"]
CMD ["run"]
