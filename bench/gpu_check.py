"""The hf scoring path on a GPU, on random-weight models of real shapes (no download): tokens/s,
MFU against the GPU's bf16 peak, peak memory, and agreement with a plain forward pass.

Models are built from transformers' config classes on the device: Qwen2.5-0.5B, Llama-3-8B and
Gemma 3 1B (a 262k vocabulary, where the LM head and the logit chunks dominate). Each is scored
by ftprep's HFScorer as `ftprep score --backend hf` does (batches of --batch-tokens, logit chunks
sized from the free memory), after one warm-up pass. The first model is also saved and loaded
back through ftprep.models.load_model (weights straight onto the device), and timed.

`--toy` runs the same code on the CPU at toy size (float32, tiny configs): what the test suite
runs, so that the script works on the day a GPU is there. Prepared for a machine with torch and
transformers and nothing else: no network, no vLLM, ftprep imported from this checkout.

Run: sh bench/gpu_check.sh [--toy] [--tokens N] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by a name fragment that
# torch.cuda.get_device_name() contains; first match wins.
BF16_PEAKS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12), ("GH200", 989e12),
              ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12),
              ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12))
# Mean |logprob difference| against the plain forward pass that counts as agreement: bf16's
# rounding with other batch shapes on a GPU (float32 on the CPU agrees to ~1e-6).
AGREEMENT_NATS = {"bfloat16": 0.05, "float32": 1e-4}


def import_ftprep():
    """ftprep as installed, else from this checkout: pipeline/ is the package `ftprep`, stages/
    its subpackage `ftprep.stages` (pyproject.toml's package-dir), registered by hand."""
    try:
        import ftprep  # noqa: F401

        return
    except ImportError:
        pass
    parent = _module_from("ftprep", REPO / "pipeline")
    parent.stages = _module_from("ftprep.stages", REPO / "stages")
    parent.__spec__.loader.exec_module(parent)


def _module_from(name: str, folder: Path):
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if name != "ftprep":  # the parent runs last: its __init__ imports ftprep.stages
        spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Shape:
    name: str
    family: str  # qwen2, llama, gemma3_text
    config: dict


REAL_SHAPES = (
    Shape("qwen2.5-0.5b", "qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                                        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                                        max_position_embeddings=32768, rope_theta=1e6)),
    Shape("llama-3-8b", "llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=5e5)),
    Shape("gemma-3-1b", "gemma3_text", dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                                            num_key_value_heads=1, head_dim=256, vocab_size=262144, sliding_window=512,
                                            query_pre_attn_scalar=256, max_position_embeddings=32768)),
)
TOY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
TOY_SHAPES = (
    Shape("qwen2-toy", "qwen2", {**TOY, "vocab_size": 1024, "tie_word_embeddings": True}),
    Shape("llama-toy", "llama", {**TOY, "vocab_size": 1024}),
    Shape("gemma3-toy", "gemma3_text", {**TOY, "vocab_size": 4096, "sliding_window": 16, "query_pre_attn_scalar": 16}),
)


def build_config(shape: Shape):
    from transformers import AutoConfig

    config = AutoConfig.for_model(shape.family, **shape.config)
    config.use_cache = False
    return config


def build_model(shape: Shape, device: str, dtype):
    """Random weights, made on the device (an 8B model never passes through host memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(build_config(shape), dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def random_rows(vocab: int, tokens: int, shortest: int, longest: int, seed: int = 0):
    """Rows of random token ids, lengths uniform in [shortest, longest], about `tokens` in all;
    the second half of each row is its assistant turn (the scored tokens)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    rows, total = [], 0
    while total < tokens:
        length = int(rng.integers(shortest, longest + 1))
        rows.append(rng.integers(10, vocab, size=length).tolist())
        total += length
    masks = [[0] * (len(row) // 2) + [1] * (len(row) - len(row) // 2) for row in rows]
    return pa.table({"input_ids": pa.array(rows, pa.list_(pa.int32())), "assistant_mask": pa.array(masks, pa.list_(pa.int8()))})


def forward_flops(config, lengths, scored: int) -> float:
    """FLOPs of the useful work (no padding): the decoder's matmuls, causal attention (within its
    window on sliding layers) and the LM head on the scored positions."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    query, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    per_layer = hidden * (query + 2 * kv) + query * hidden + 3 * hidden * config.intermediate_size
    tokens = sum(lengths)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * layers
    window = getattr(config, "sliding_window", None)
    attended = 0
    for kind in layer_types:
        reach = window if kind == "sliding_attention" and window else None
        attended += sum(attended_pairs(length, reach) for length in lengths)
    return 2 * per_layer * layers * tokens + 4 * query * attended + 2 * hidden * config.vocab_size * scored


def attended_pairs(length: int, window: int | None) -> int:
    """Query-key pairs of causal attention over a row, each query seeing at most `window` keys."""
    if window is None or length <= window:
        return length * (length + 1) // 2
    return window * (window + 1) // 2 + (length - window) * window


def bf16_peak(device_name: str) -> float | None:
    return next((peak for fragment, peak in BF16_PEAKS if fragment in device_name), None)


def measured_matmul_peak(device: str, dtype, size: int) -> float:
    """FLOP/s of square matmuls on this device (the achievable ceiling, beside the data sheet)."""
    import torch

    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    started, repeats = time.perf_counter(), 10
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_forward_agreement(model, scored_table, rows: int) -> dict:
    """|logprob difference| between the scorer's and one plain forward pass per row (float32
    log-softmax of the model's own logits), and how often both agree on the greedy choice."""
    import numpy as np
    import torch

    differences, same_greedy = [], []
    with torch.inference_mode():
        for index in range(min(rows, scored_table.num_rows)):
            ids = scored_table.column("input_ids")[index].as_py()
            scored = np.asarray(scored_table.column("logprobs")[index].as_py(), np.float32)
            ranks = np.asarray(scored_table.column("rank")[index].as_py())
            tokens = torch.tensor([ids], device=model.device)
            logprobs = model(input_ids=tokens, use_cache=False).logits[0].float().log_softmax(-1)
            target = logprobs[:-1].gather(1, tokens[0, 1:, None])[:, 0].cpu().numpy()
            greedy = (logprobs[:-1].argmax(-1) == tokens[0, 1:]).cpu().numpy()
            where = ~np.isnan(scored[1:])
            differences.append(np.abs(scored[1:][where] - target[where]))
            same_greedy.append((ranks[1:][where] == 1) == greedy[where])
    difference = np.concatenate(differences)
    return {"mean_abs_diff": float(difference.mean()), "max_abs_diff": float(difference.max()),
            "greedy_agreement": float(np.concatenate(same_greedy).mean())}


def check_model(shape: Shape, args, device: str, dtype_name: str) -> dict:
    import numpy as np
    import torch

    from ftprep.stages import flat_values
    from ftprep.stages.score.hf import HFScorer

    dtype = getattr(torch, dtype_name)
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model = build_model(shape, device, dtype)
    built = time.perf_counter() - started
    scorer = HFScorer(model, batch_tokens=args.batch_tokens)
    table = random_rows(model.config.vocab_size, args.tokens, args.shortest, args.longest)
    scorer(random_rows(model.config.vocab_size, args.tokens // 8, args.shortest, args.longest, seed=1))  # warm-up
    synchronize(device)
    started = time.perf_counter()
    scored = scorer(table)
    synchronize(device)
    seconds = time.perf_counter() - started
    lengths = [len(row) for row in table.column("input_ids").to_pylist()]
    scored_positions = int((~np.isnan(flat_values(scored, "logprobs"))).sum())
    flops = forward_flops(model.config, lengths, scored_positions)
    result = {
        "model": shape.name, "dtype": dtype_name, "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": model.config.vocab_size, "rows": table.num_rows, "tokens": sum(lengths), "scored": scored_positions,
        "batch_tokens": scorer.batch_tokens, "chunk_positions": scorer.chunk_positions, "build_seconds": built,
        "seconds": seconds, "tokens_per_second": sum(lengths) / seconds, "achieved_flops": flops / seconds,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if on_gpu else None,
        **plain_forward_agreement(model, scored, args.agreement_rows),
    }
    result["agrees"] = result["mean_abs_diff"] < AGREEMENT_NATS[dtype_name]
    if args.load_check:
        result["load_seconds"] = load_through_ftprep(model, device, dtype_name)
        args.load_check = False  # the first model only: one save and load is the point
    del scorer, model, scored
    return result


def load_through_ftprep(model, device: str, dtype_name: str) -> float:
    """Save the model and load it back as `ftprep score --backend hf` does (weights straight onto
    the device); the seconds it takes, and a check that it landed there."""
    from ftprep.models import load_model

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        model.save_pretrained(folder)
        started = time.perf_counter()
        loaded = load_model(folder, dtype_name, device)
        synchronize(device)
        seconds = time.perf_counter() - started
        placed = {parameter.device.type for parameter in loaded.parameters()}
        if placed != {device.split(":")[0]}:
            raise SystemExit(f"load_model left parameters on {placed}, not on {device}")
    return seconds


def report_line(result: dict, peak: float | None, matmul_peak: float) -> str:
    memory = f", peak memory {result['peak_memory_bytes'] / 2**30:.1f} GiB" if result["peak_memory_bytes"] is not None else ""
    mfu = f"MFU {result['achieved_flops'] / peak:.1%} of the bf16 peak, " if peak else ""
    load = f", load_model {result['load_seconds']:.1f} s" if "load_seconds" in result else ""
    return (f"{result['model']:<14} {result['tokens']:>7,} tokens in {result['seconds']:6.2f} s: {result['tokens_per_second']:>9,.0f} tok/s, "
            f"{mfu}{result['achieved_flops'] / matmul_peak:.1%} of measured matmul; chunk {result['chunk_positions']} positions"
            f"{memory}; vs plain forward: mean |diff| {result['mean_abs_diff']:.1e} (max {result['max_abs_diff']:.1e}), "
            f"greedy agreement {result['greedy_agreement']:.1%} {'ok' if result['agrees'] else 'DISAGREES'}{load}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--toy", action="store_true", help="CPU, float32, tiny configs: the test suite's run")
    parser.add_argument("--tokens", type=int, help="tokens scored per model (default: 65536 on GPU, 2048 with --toy)")
    parser.add_argument("--batch-tokens", type=int, help="as ftprep score's --batch-tokens (default: its default on the device)")
    parser.add_argument("--models", help="comma-separated names (default: all)")
    parser.add_argument("--budget-seconds", type=float, default=480, help="skip the models left once this much time has passed")
    parser.add_argument("--out", help="folder for gpu_check.json")
    args = parser.parse_args()

    import_ftprep()
    import torch

    from ftprep.runtime import resolve_device
    from ftprep.stages.errors import FtprepError
    from ftprep.stages.score import default_batch_tokens

    try:
        device = "cpu" if args.toy else resolve_device("cuda")  # where torch cannot use the GPU: ftprep's one line
    except FtprepError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    dtype_name = "float32" if args.toy else "bfloat16"
    shapes = TOY_SHAPES if args.toy else REAL_SHAPES
    if args.models:
        shapes = [shape for shape in shapes if shape.name in args.models.split(",")]
    args.tokens = args.tokens or (2048 if args.toy else 65536)
    args.shortest, args.longest = (16, 96) if args.toy else (256, 2048)
    args.batch_tokens = args.batch_tokens or default_batch_tokens(device)
    args.agreement_rows = 4
    args.load_check = True

    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    peak = bf16_peak(name) if device.startswith("cuda") else None
    matmul_peak = measured_matmul_peak(device, getattr(torch, dtype_name), 256 if args.toy else 8192)
    print(f"device {name}, torch {torch.__version__} (CUDA {torch.version.cuda}), data-sheet bf16 peak "
          f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown'}, measured {dtype_name} matmul {matmul_peak / 1e12:.2f} TFLOP/s", flush=True)

    started, results = time.perf_counter(), []
    for shape in shapes:
        if time.perf_counter() - started > args.budget_seconds:
            print(f"{shape.name}: skipped (past --budget-seconds {args.budget_seconds:g})", flush=True)
            continue
        result = check_model(shape, args, device, dtype_name)
        results.append(result)
        print(report_line(result, peak, matmul_peak), flush=True)

    summary = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "bf16_peak": peak,
               "measured_matmul_flops": matmul_peak, "results": results}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    return 0 if results and all(result["agrees"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
