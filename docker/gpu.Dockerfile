# syntax=docker/dockerfile:1
# mucode GPU image: the sampling/scoring worker (vLLM) and the trainer. It builds on a vLLM image, which
# brings CUDA, a CUDA build of torch and vLLM itself; mucode's `gpu` extra is installed on top without
# changing those. Build from the repository root:
#   docker build -f docker/gpu.Dockerfile -t mucode-gpu .
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VLLM_WORKER_MULTIPROC_METHOD=spawn \
    TOKENIZERS_PARALLELISM=false

RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mucode
COPY pyproject.toml README.md ./
# Pin what the base image ships (torch, vllm, transformers, CUDA wheels) so that the extra cannot replace it.
RUN for p in app workers trainers dashboard migrations; do mkdir -p "$p" && touch "$p/__init__.py"; done \
 && python3 -m pip freeze | grep -iE '^(torch|torchvision|torchaudio|vllm|transformers|triton|xformers|flashinfer[a-z0-9_-]*|nvidia-[a-z0-9_-]+)==' > /tmp/base-constraints.txt \
 && python3 -m pip install -c /tmp/base-constraints.txt -e ".[gpu]"
COPY migrations ./migrations
COPY dashboard ./dashboard
COPY trainers ./trainers
COPY workers ./workers
COPY app ./app

RUN groupadd --system --gid 10001 mucode \
 && useradd --system --uid 10001 --gid mucode --create-home --home-dir /home/mucode --shell /usr/sbin/nologin mucode \
 && mkdir -p /models /artifacts \
 && chown mucode:mucode /models /artifacts

USER mucode
# The base image's entrypoint starts an OpenAI server; mucode runs its own worker instead.
ENTRYPOINT ["tini", "--"]
CMD ["mucode", "doctor", "--queues", "sample,score"]
