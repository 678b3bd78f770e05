#!/bin/sh
# Runs the configs `ftprep export-config` prints, as printed, in the real trainers, and checks that
# ftprep's labels reach them unchanged (every -100 survives):
#   Axolotl 0.21.0        `axolotl preprocess`, then `axolotl train` (one epoch of 8 rows: 2 steps)
#   LLaMA-Factory 0.9.5   `llamafactory-cli train` (one epoch of 8 rows: 2 steps)
# Each trainer gets a virtual environment of its own (.venv-axolotl, .venv-llamafactory), made once.
# By hand, not in .ci/run (installs and CPU training outgrow the suite's time budget):
#
#   scripts/check-trainers.sh [WORK_DIR]        # from the repository root; default WORK_DIR: out/check-trainers
#
# FTPREP: the ftprep command to use (default .venv/bin/ftprep, as `make` installs it); PYTHON: the
# interpreter for the trainers' environments (default python3.11); FTPREP_TORCH_VERSION (2.13.0);
# SKIP_AXOLOTL_TRAIN=1 stops Axolotl after preprocess; TRAINER_VENVS: where the two environments
# live (default: the repository root); TORCH_INDEX: an index for torch alone, e.g.
# https://download.pytorch.org/whl/cpu where the configured index would give torch's CUDA wheels.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$repo/out/check-trainers}
python=${PYTHON:-python3.11}
ftprep=${FTPREP:-$repo/.venv/bin/ftprep}
torch_version=${FTPREP_TORCH_VERSION:-2.13.0}
helpers=$repo/scripts/check_trainers
venvs=${TRAINER_VENVS:-$repo}
[ -x "$ftprep" ] || ftprep=$(command -v ftprep) || { echo "no ftprep: run make, or set FTPREP" >&2; exit 1; }

say() { printf '\n== %s\n' "$*"; }

new_venv() {  # new_venv DIR: a fresh environment with the CPU build of torch
    rm -rf "$1"
    "$python" -m venv "$1"
    "$1/bin/python" -m pip install -q --upgrade pip
    "$1/bin/python" -m pip install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==$torch_version"
}

install_axolotl() {
    venv=$venvs/.venv-axolotl
    [ -f "$venv/.ready" ] && return 0
    say "installing Axolotl 0.21.0 in $venv"
    new_venv "$venv"
    # Axolotl 0.21 declares Python >= 3.12 and pins CUDA-only packages (xformers, bitsandbytes, triton,
    # flash-linear-attention...): the wheel alone, then what preprocess and train import on the CPU.
    "$venv/bin/python" -m pip install -q --no-deps --ignore-requires-python axolotl==0.21.0
    "$venv/bin/python" -m pip install -q transformers==5.20.1 tokenizers==0.23.3 peft==0.21.2 accelerate==1.15.0 \
        datasets==5.0.1 trl==1.14.1 pydantic==2.13.5 PyYAML==6.0.3 packaging==26.0 python-dotenv==1.0.1 \
        addict fire colorama einops requests sentencepiece art fastcore numpy scipy posthog pillow numba \
        bitsandbytes==0.50.2 "kernels>=0.17.2,<0.18.0" evaluate wandb
    "$venv/bin/python" -m pip install -q --no-deps axolotl-contribs-lgpl==0.0.7 axolotl-contribs-mit==0.0.6
    touch "$venv/.ready"
}

install_llamafactory() {
    venv=$venvs/.venv-llamafactory
    [ -f "$venv/.ready" ] && return 0
    say "installing LLaMA-Factory 0.9.5 in $venv"
    new_venv "$venv"
    "$venv/bin/python" -m pip install -q --no-deps llamafactory==0.9.5
    "$venv/bin/python" -m pip install -q "transformers>=4.55.0,<=5.6.0" "datasets>=2.16.0,<=4.0.0" "trl>=0.18.0,<=0.24.0" \
        "peft>=0.18.0,<=0.18.1" "accelerate>=1.3.0,<=1.11.0" "tyro<0.9.0" einops fire omegaconf packaging pandas \
        protobuf pydantic pyyaml safetensors scipy sentencepiece tiktoken numpy matplotlib
    # LLaMA-Factory imports torchaudio when it loads (for audio datasets only). No torchaudio build
    # loads with torch 2.13 (PyPI's newest, 2.11, fails on its _torchaudio.so): a stand-in module
    # that fails on any use takes its place; text training never calls it.
    site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    mkdir -p "$site/torchaudio"
    cat > "$site/torchaudio/__init__.py" <<'EOF'
"""A stand-in written by ftprep's scripts/check-trainers.sh: no torchaudio build loads with torch 2.13,
and LLaMA-Factory imports torchaudio at load time though only audio datasets use it."""


def __getattr__(name):
    raise ImportError(f"torchaudio.{name}: this environment has a stand-in, not torchaudio (text training only)")
EOF
    touch "$venv/.ready"
}

# A trainer's command, with every batch it trains on recorded (sitecustomize.py) for compare_labels.py.
recorded() {
    batches=$1
    shift
    rm -f "$batches"
    FTPREP_RECORD_BATCHES=$batches PYTHONPATH=$helpers "$@"
}

install_axolotl
install_llamafactory

say "a small training folder: 8 rows of data/sample.jsonl, scored by the embedded model, STM threshold"
# WORK_DIR is emptied first: only a folder this script made before, or an empty one.
if [ -d "$work" ] && [ -n "$(ls -A "$work")" ] && [ ! -f "$work/.check-trainers" ]; then
    echo "$work holds other files: give a new folder" >&2
    exit 1
fi
rm -rf "$work"
mkdir -p "$work"
touch "$work/.check-trainers"
cd "$work"
"$ftprep" score "$repo/data/sample.jsonl" --limit 8 -o scored
"$ftprep" mask scored -o train
# The trainers run offline here: --base-model names the local copy of the model that scored
# (the default, HuggingFaceTB/SmolLM2-135M-Instruct, needs the Hub).
model=$("$venvs/.venv-axolotl/bin/python" -c "import json; print(json.load(open('train/ftprep.json'))['model']['path'])")
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 AXOLOTL_DO_NOT_TRACK=1 WANDB_DISABLED=true

say "Axolotl"
mkdir axolotl
"$ftprep" export-config train --target axolotl --base-model "$model" > axolotl/axolotl.yml
cat axolotl/axolotl.yml
# Each trainer runs with its environment's bin/ first on PATH, as once activated (`axolotl train`
# starts `accelerate launch` from PATH).
(cd axolotl && PATH=$venvs/.venv-axolotl/bin:$PATH && axolotl preprocess axolotl.yml > preprocess.log 2>&1) \
    || { tail -30 axolotl/preprocess.log; exit 1; }
grep "Success" axolotl/preprocess.log
prepared=$(dirname "$(ls axolotl/last_run_prepared/*/state.json)")
"$venvs/.venv-axolotl/bin/python" "$helpers/compare_labels.py" train --prepared "$prepared"
if [ "${SKIP_AXOLOTL_TRAIN:-0}" != 1 ]; then
    (cd axolotl && PATH=$venvs/.venv-axolotl/bin:$PATH && recorded "$PWD/batches.jsonl" axolotl train axolotl.yml > train.log 2>&1) \
        || { tail -30 axolotl/train.log; exit 1; }
    grep -o "{'train_runtime'[^}]*}" axolotl/train.log | tail -1
    "$venvs/.venv-axolotl/bin/python" "$helpers/compare_labels.py" train --batches axolotl/batches.jsonl
fi

say "LLaMA-Factory"
mkdir llama-factory
"$ftprep" export-config train --target llama-factory --base-model "$model" > llama-factory/llama-factory.yml
cat llama-factory/llama-factory.yml
(cd llama-factory && PATH=$venvs/.venv-llamafactory/bin:$PATH && recorded "$PWD/batches.jsonl" llamafactory-cli train \
    llama-factory.yml > train.log 2>&1) || { tail -30 llama-factory/train.log; exit 1; }
grep -o "{'train_runtime'[^}]*}" llama-factory/train.log | tail -1
"$venvs/.venv-llamafactory/bin/python" "$helpers/compare_labels.py" train --batches llama-factory/batches.jsonl

say "all trainers ran the exported configs as printed; labels unchanged"
