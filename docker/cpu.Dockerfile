# syntax=docker/dockerfile:1
# mucode CPU image: migrations and data loading, sandbox (execute) workers, the control worker, the dashboard,
# and CPU sampling/training (transformers). Build from the repository root:
#   docker build -f docker/cpu.Dockerfile -t mucode-cpu .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini as PID 1: forwards SIGTERM to the worker (warm shutdown) and reaps orphaned sandbox children.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

# torch first, pinned, from the PyTorch CPU index: PyPI's default Linux wheel is the multi-GB CUDA build.
# (Set TORCH_INDEX_URL=https://pypi.org/simple to take it from PyPI instead.)
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /opt/mucode
# Dependencies before the code, so that a code change does not reinstall them: an editable install against
# empty package stubs, then the real packages are copied over the stubs (the editable finder maps the
# top-level packages to these folders). `torch==` keeps the CPU build in place.
COPY pyproject.toml README.md ./
RUN for p in app workers trainers dashboard migrations; do mkdir -p "$p" && touch "$p/__init__.py"; done \
 && pip install -e ".[cpu,dashboard]" "torch==${TORCH_VERSION}"
COPY migrations ./migrations
COPY dashboard ./dashboard
COPY trainers ./trainers
COPY workers ./workers
COPY app ./app

# The services run as an unprivileged user. The sandbox worker alone starts as root (docker-compose.yml gives
# it a handful of capabilities) so that it can switch each sandboxed child to an unprivileged uid of its own.
RUN groupadd --system --gid 10001 mucode \
 && useradd --system --uid 10001 --gid mucode --create-home --home-dir /home/mucode --shell /usr/sbin/nologin mucode \
 && mkdir -p /models /artifacts \
 && chown mucode:mucode /models /artifacts

USER mucode
ENTRYPOINT ["tini", "--"]
CMD ["mucode", "doctor"]
