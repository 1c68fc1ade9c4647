# One image for the api, worker and beat services (docs/deployment.md).
#   docker build -t taskgauge .                                   # CPU torch (default)
#   docker build -t taskgauge-cuda --build-arg TORCH_VARIANT=cu124 .   # CUDA torch, for GPU workers
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
# cpu, or a CUDA wheel tag of download.pytorch.org (cu121, cu124, …)
ARG TORCH_VARIANT=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TASKGAUGE_DATA_DIR=/data

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/taskgauge

# torch first, from the index of the chosen variant, so that no dependency pulls another build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"

# Dependencies before the source, for layer caching.
COPY pyproject.toml setup.py constraints.txt README.md ./
RUN mkdir -p app workers estimators \
    && touch app/__init__.py workers/__init__.py estimators/__init__.py \
    && PIP_CONSTRAINT=constraints.txt pip install -e . \
    && rm -rf app workers estimators

# The source, including migrations/ and alembic.ini (`taskgauge db upgrade` reads them from here).
COPY app ./app
COPY workers ./workers
COPY taskgauge ./taskgauge
COPY estimators ./estimators
COPY migrations ./migrations
COPY alembic.ini ./
RUN PIP_CONSTRAINT=constraints.txt pip install --no-deps -e . \
    && useradd --create-home --uid 10001 taskgauge \
    && mkdir -p /data && chown taskgauge /data

USER taskgauge
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=5 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)" || exit 1

CMD ["taskgauge", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker", "--migrate"]
