# syntax=docker/dockerfile:1
#
# backfill as a container image.
#
#   docker build -t backfill:0.1.0 --build-arg VCS_REF="$(git rev-parse HEAD)" .
#   docker run --rm -v backfill-data:/var/lib/backfill \
#       -e BACKFILL_API_KEY -e BACKFILL_ORG_ID -e BACKFILL_CLIENT_ID \
#       -e BACKFILL_CLIENT_SECRET_FILE=/run/secrets/client-secret \
#       -v "$PWD/client-secret:/run/secrets/client-secret:ro" \
#       backfill:0.1.0 run --flow-id ... --start ... --end ... --window 1d
#
# No credential is ever baked in: they come at run time from the environment or from
# files (BACKFILL_*_FILE) mounted from a secret store. See configs/k8s/ for Kubernetes.

# ---------------------------------------------------------------- builder: the wheel
FROM python:3.12-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Only what the wheel is made of (hatchling reads README.md for the long description):
# a change to the tests or the docs does not rebuild this layer.
COPY pyproject.toml README.md ./
COPY backfill ./backfill
RUN pip wheel --no-deps --wheel-dir /dist .

# ---------------------------------------------------------------- runtime
FROM python:3.12-slim AS runtime

ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="backfill" \
      org.opencontainers.image.description="Re-ingest history into Adobe Experience Platform as Flow Service runs, exactly once, resumably." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12-slim"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The wheel from the builder, with its dependencies from the index; byte-compiled at
# install time, so a read-only root filesystem costs nothing at start.
COPY --from=builder /dist /tmp/dist
RUN pip install --no-cache-dir /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && backfill --version

# A fixed, non-root uid/gid, so that Kubernetes' runAsUser/fsGroup and the ownership of
# volumes can name it. The state directory is created and chowned *before* VOLUME: changes
# made to a volume path after VOLUME would be discarded.
RUN groupadd --system --gid 10001 backfill \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/backfill \
       --no-create-home --shell /usr/sbin/nologin backfill \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/backfill

# The checkpoint (and its .lock) must outlive the container: it is what a restart resumes from.
VOLUME /var/lib/backfill
WORKDIR /var/lib/backfill

# PYTHONUNBUFFERED: log lines reach `docker logs` / `kubectl logs` at once.
# BACKFILL_LOG_FORMAT=json: one JSON object per line, whatever the terminal.
# No BACKFILL_CHECKPOINT here: a variable would beat a --config file's `checkpoint` key. The
# default checkpoint path is relative, and the working directory is the volume.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BACKFILL_LOG_FORMAT=json

USER 10001:10001

# Exec form: backfill is PID 1 and receives SIGTERM itself (graceful stop, exit 143).
ENTRYPOINT ["backfill"]
CMD ["--help"]
