# hqm: one image for the proxy sidecar and the workers.
#   docker build -t openhqm:0.1.0 .
#   docker run --rm openhqm:0.1.0 proxy --upstream app:8080 --redis redis://redis:6379/0
#   docker run --rm openhqm:0.1.0 worker --upstream app:8080 --redis redis://redis:6379/0
# and the init container of transparent mode (the same venv plus iptables):
#   docker build --target iptables-init -t openhqm-init:0.1.0 .
#
# tests/test_dockerfile.py checks this file's structure and runs the builder's steps.

# --- builder: a wheel of this checkout, installed into a venv -----------------------
FROM python:3.11.11-slim-bookworm AS builder
# The venv's path is the same in every stage: its scripts name their interpreter by
# absolute path, so it works only where it was built.
ENV VIRTUAL_ENV=/opt/hqm \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY hqm/ hqm/
# the original OpenHQM's module names (python -m openhqm.worker.worker)
COPY openhqm/ openhqm/
# uvloop and orjson ship manylinux wheels: no compiler needed, none installed.
# The venv gets no pip of its own: the builder's pip fills it from outside.
RUN python -m pip wheel --no-deps --wheel-dir dist . \
 && python -m venv --without-pip "$VIRTUAL_ENV" \
 && python -m pip --python "$VIRTUAL_ENV/bin/python" install dist/*.whl \
 && "$VIRTUAL_ENV/bin/hqm" --version

# --- iptables-init: transparent mode's init container (`hqm iptables`) -------------
# Only this image carries iptables; it runs once per pod with NET_ADMIN and exits.
FROM python:3.11.11-slim-bookworm AS iptables-init
RUN apt-get update \
 && apt-get install --yes --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/hqm /opt/hqm
ENV VIRTUAL_ENV=/opt/hqm \
    PATH=/opt/hqm/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["hqm"]
CMD ["iptables", "--help"]

# --- runtime (the default target): the slim base and the venv, nothing else --------
FROM python:3.11.11-slim-bookworm
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="openhqm" \
      org.opencontainers.image.description="Async queue sidecar for HTTP/1.1: a durable queue in front of any app, with zero code changes." \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.11-slim-bookworm"
COPY --from=builder /opt/hqm /opt/hqm
# The admin listener on every address, so kubelet probes and Prometheus reach it
# (hqm's own default is loopback, so that metrics are not exposed by accident).
ENV VIRTUAL_ENV=/opt/hqm \
    PATH=/opt/hqm/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HQM_PROXY_ADMIN=0.0.0.0:9090 \
    HQM_WORKER_ADMIN=0.0.0.0:9091
# The uid/gid the Kubernetes manifests run as (runAsUser 1337); no passwd entry needed.
USER 1337:1337
# 8000 proxy, 9090 proxy admin, 9091 worker admin.
EXPOSE 8000 9090 9091
ENTRYPOINT ["hqm"]
CMD ["proxy"]
