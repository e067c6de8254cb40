# syntax=docker/dockerfile:1
# One image for every Orderflow process: `docker run IMAGE inventory` (see docker/entrypoint.sh).
# The manifests in deploy/k8s and docker-compose.yml run it; tests/e2e/test_manifests.py reads the
# ENTRYPOINT, WORKDIR and ENV lines of the final stage, so keep them one instruction per line.

# The base: any Debian bookworm image with Python 3.11 as python3 and its venv module. Without a registry,
# scripts/build-image makes one from Debian's packages (localhost/orderflow-base) and passes it here.
# checkov:skip=CKV_DOCKER_7: FROM ${BASE_IMAGE} is not resolved by checkov; the default below is a pinned tag
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

# app: the production image. devservers: the same with devservers/ and its extra (aiosmtpd), for what runs the
# development servers from the image (docker-compose.yml, deploy/k8s's local overlay); --build-arg VARIANT=devservers.
ARG VARIANT=app

# -- build: a virtualenv with Orderflow and its dependencies (all of them ship wheels; no compiler needed) --
FROM ${BASE_IMAGE} AS build
ARG VARIANT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
# The lock (scripts/lock): every package and the build backend pinned with hashes; then Orderflow itself,
# resolving and fetching nothing more.
COPY requirements/app.txt ./requirements/
RUN /opt/venv/bin/pip install --no-compile --require-hashes -r requirements/app.txt
COPY pyproject.toml ./
COPY plumbing ./plumbing
COPY contracts ./contracts
COPY orchestrator ./orchestrator
COPY services ./services
COPY orderctl ./orderctl
RUN /opt/venv/bin/pip install --no-compile --no-deps --no-build-isolation .
# The variant is a condition, not a stage chosen by `FROM build-${VARIANT}`: Debian bookworm's buildah (1.28)
# cannot resolve a stage name built from an ARG. With VARIANT=app devservers/ stays in this stage only.
COPY requirements/devservers.txt ./requirements/
COPY devservers ./devservers
RUN if [ "$VARIANT" = devservers ]; then \
        /opt/venv/bin/pip install --no-compile --require-hashes -r requirements/devservers.txt \
        && /opt/venv/bin/pip install --no-compile --no-deps --no-build-isolation --force-reinstall . ; \
    fi \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# -- final: the virtualenv, the entrypoint and an unprivileged user; no pip, no build tools --
FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 orderflow \
    && useradd --system --uid 10001 --gid orderflow --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin orderflow
COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 docker/entrypoint.sh /app/docker/entrypoint.sh
WORKDIR /app
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin
ENV PYTHONUNBUFFERED=1
ENV PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
# No HEALTHCHECK: one image runs processes on different ports (and one-shot commands); Kubernetes probes
# /healthz and /readyz, and docker-compose.yml declares a healthcheck per service.
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["help"]
