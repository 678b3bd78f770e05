#!/bin/sh
# The one prepared check for the day a GPU machine is lent: ftprep's hf scoring path on random-weight
# models of real shapes (Qwen2.5-0.5B, Llama-3-8B, Gemma 3 1B's 262k vocabulary), tokens/s, MFU,
# peak memory and agreement with a plain forward pass (bench/gpu_check.py says how). It needs torch
# and transformers (and numpy, pyarrow), no network and no vLLM; ftprep comes from this checkout.
# About 3-5 minutes on an H100/H200, most of it building the 8B model; --budget-seconds skips the
# models left past it. $OUT, where set (the device tool), gets gpu_check.json.
#
#   sh bench/gpu_check.sh            # on the GPU machine
#   sh bench/gpu_check.sh --toy      # on the CPU at toy size (tests/test_gpu_check.py runs this)
#
# PYTHON picks the interpreter (default: python3). Exit status: 0 when every model agrees with
# the plain forward pass, 1 when one does not, 2 when no GPU can be used.
set -eu
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
case " $* " in
    *" --toy "*) ;;
    *) command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true ;;
esac
exec "$python" bench/gpu_check.py ${OUT:+--out "$OUT"} "$@"
