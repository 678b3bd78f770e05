"""`ftprep iv`: extract a dataset's instruction vector from the model and write it beside its heads.

Reads INPUT like `ftprep score` (any format), takes `--prompts` rows at random (`--seed`), and
measures on them (stages/iv.py). A row's prompt is its conversation up to its first assistant turn,
rendered with the chat template and its generation header; the answer is that turn's first
`--answer-tokens` tokens.

Corrupted instruction: the words of the user turn right before the answer, shuffled (a seeded
permutation that differs from the original order). The content words stay, so what patching restores
is what the instruction's form carries (what is asked, how to answer), not facts the words give away.
System turns and earlier turns stay as they are.

Outputs: OUT.safetensors with one float32 tensor `layer.N` (hidden size) per layer that holds a chosen
head, and in its metadata the model fingerprint, the heads and the settings as JSON; OUT.json beside
it with the heads and scores of every measured head, the log-probabilities (clean, corrupted,
corrupted with the IV added), the prompts used and the settings.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftprep.manifest import ModelInfo, RunManifest, TokenizerInfo
from ftprep.models import fingerprint_model, fingerprint_tokenizer, load_model, load_tokenizer, resolve_model
from ftprep.progress import Progress
from ftprep.readers import open_source
from ftprep.stages.errors import FtprepError, RowError
from ftprep.stages.normalize import normalize_row, row_id
from ftprep.stages.tokenization import ChatTokenizer
from ftprep.writers import write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    import torch

FORMAT = "ftprep-instruction-vector"
CORRUPTION = "words of the user turn before the answer shuffled"


def sidecar_path(output: Path) -> Path:
    return output.with_suffix(".json")


def parse_layers(spec: str | None, layer_count: int) -> list[int]:
    """'0-3,12' -> [0, 1, 2, 3, 12]; None -> every layer."""
    if spec is None:
        return list(range(layer_count))
    layers: set[int] = set()
    try:
        for part in spec.split(","):
            first, _, last = part.strip().partition("-")
            layers.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise FtprepError(f"--layers {spec!r} is not a list of layers and ranges like 0-9,12") from None
    outside = sorted(layer for layer in layers if not 0 <= layer < layer_count)
    if outside or not layers:
        raise FtprepError(f"--layers {spec!r}: the model has layers 0-{layer_count - 1}")
    return sorted(layers)


def shuffle_words(text: str, rng: random.Random) -> str | None:
    """The words of text in a seeded order other than the original; None when every word is the same."""
    words = text.split()
    if len(set(words)) < 2:
        return None
    shuffled = rng.sample(words, len(words))
    if shuffled == words:  # rotating a sequence of two or more distinct words always changes it
        shuffled = words[1:] + words[:1]
    return " ".join(shuffled)


def instruction_rows(rows, fmt: str) -> tuple[list[tuple[str, list[dict]]], Counter]:
    """(id, conversation cut after its first assistant turn) for rows with a user turn right before
    that answer; the reasons the other rows were left out."""
    usable, skipped = [], Counter()
    for index, row in rows:
        try:
            if isinstance(row, RowError):
                raise row
            messages = normalize_row(row, fmt)
        except RowError as error:
            skipped[str(error).split(":")[0]] += 1
            continue
        answer = next(i for i, message in enumerate(messages) if message["role"] == "assistant")
        if answer == 0 or messages[answer - 1]["role"] != "user":
            skipped["no user turn right before the first assistant turn"] += 1
        elif len(set(messages[answer - 1]["content"].split())) < 2:
            skipped["user turn too short to shuffle"] += 1
        else:
            usable.append((row_id(row, index), messages[: answer + 1]))
    return usable, skipped


def corrupt(messages: list[dict], rng: random.Random) -> list[dict]:
    instruction = dict(messages[-2], content=shuffle_words(messages[-2]["content"], rng))
    return [*messages[:-2], instruction, messages[-1]]


def pick_examples(candidates, chat: ChatTokenizer, count: int, rng: random.Random) -> list[dict]:
    """`count` examples drawn at random, with their tokens; rows the chat template cannot render are passed over."""
    examples = []
    for identifier, messages in rng.sample(candidates, len(candidates)):
        corrupted = corrupt(messages, rng)
        clean_row, corrupted_row = chat([messages, corrupted])
        if isinstance(clean_row, RowError) or isinstance(corrupted_row, RowError):
            continue
        start = int(clean_row.assistant_mask.argmax())
        corrupted_start = int(corrupted_row.assistant_mask.argmax())
        examples.append({"id": identifier, "instruction": messages[-2]["content"], "corrupted": corrupted[-2]["content"],
                         "prompt": clean_row.input_ids[:start].tolist(),
                         "corrupted_prompt": corrupted_row.input_ids[:corrupted_start].tolist(),
                         "answer": clean_row.input_ids[start:].tolist()})
        if len(examples) == count:
            break
    return examples


def _too_few(config: Any, found: int, skipped: Counter) -> FtprepError:
    reasons = f" (left out: {', '.join(f'{n} {reason}' for reason, n in skipped.most_common(3))})" if skipped else ""
    if found == 0:
        return FtprepError(f"{config.input} has no row with a user instruction and an assistant answer{reasons}")
    return FtprepError(f"{config.input} has {found} rows with a user instruction and an assistant answer, "
                       f"--prompts {config.prompts} needs as many{reasons}: lower --prompts")


class InstructionVectorRun:
    """`ftprep iv` as the runner runs it (ftprep.runner.run_files): OUT.safetensors and OUT.json,
    with a manifest beside them. The input, model, device and dtype are resolved first, so a bad
    one fails before anything is read or written."""

    made_from = "input"

    def __init__(self, config: Any):
        from ftprep.runtime import resolve_device, resolve_dtype

        self.settings = config
        self.output = config.output
        if Path(config.output).suffix != ".safetensors":
            raise FtprepError(f"-o {config.output}: name a .safetensors file, e.g. iv.safetensors")
        self.source = open_source(config.input, config.split, config.limit)
        self.model_dir = resolve_model(config.model)
        self.tokenizer = load_tokenizer(self.model_dir, config.chat_template, config.trust_remote_code)
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)

    def identity(self) -> dict:
        return {"command": "iv", "settings": self.settings.result_settings(), "input": self.source.identity(),
                "model": fingerprint_model(self.model_dir), "tokenizer": fingerprint_tokenizer(self.tokenizer),
                "device": self.device, "dtype": self.dtype}

    def files(self) -> list[Path]:
        return [Path(self.output), sidecar_path(Path(self.output))]

    def write(self) -> RunManifest:
        from ftprep.runtime import library_versions

        report = extract(self.settings, self.source, self.model_dir, self.tokenizer, self.device, self.dtype)
        model = report["model"]
        return RunManifest(stage="iv", config=self.settings.to_dict(), format=report["settings"]["format"],
                           model=ModelInfo(spec=model["spec"], path=model["path"], fingerprint=model["fingerprint"],
                                           device=self.device, dtype=self.dtype),
                           tokenizer=TokenizerInfo(fingerprint=report["tokenizer"]["fingerprint"]), versions=library_versions())


def extract_instruction_vector(config: Any, overwrite: bool = False, echo=None) -> dict:
    """Run `ftprep iv` with these settings (unless its output is complete already); its report (OUT.json)."""
    from functools import partial

    from ftprep.runner import run_files

    run_files(partial(InstructionVectorRun, config), overwrite=overwrite, echo=echo or (lambda message: None))
    return json.loads(sidecar_path(Path(config.output)).read_text())


def extract(config: Any, source, model_dir: str, tokenizer, device: str, dtype: str) -> dict:
    """Measure the heads, write OUT.safetensors and OUT.json, and return the report."""
    import torch
    from safetensors.torch import save

    from ftprep.readers import rows_and_format
    from ftprep.runtime import library_versions
    from ftprep.stages.iv import (
        AnswerScorer,
        add_instruction_vector,
        attention_layout,
        head_effects,
        heads_side_by_side,
        layer_vectors,
        mean_head_outputs,
        top_heads,
    )

    output = Path(config.output)
    rows, fmt = rows_and_format(source, config.format)
    candidates, skipped = instruction_rows(rows, fmt)
    if len(candidates) < config.prompts:
        raise _too_few(config, len(candidates), skipped)
    rng = random.Random(config.seed)
    examples = pick_examples(candidates, ChatTokenizer(tokenizer, train_on="last"), config.prompts, rng)
    if len(examples) < config.prompts:
        raise _too_few(config, len(examples), skipped + Counter({"chat template failed": len(candidates) - len(examples)}))

    model = load_model(model_dir, dtype, device, config.trust_remote_code)
    layout = attention_layout(model)
    layers = parse_layers(config.layers, layout.layers)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    answers = [example["answer"] for example in examples]

    started = time.perf_counter()
    clean = AnswerScorer(model, [example["prompt"] for example in examples], answers, config.answer_tokens, pad_id)
    means, clean_logprob = mean_head_outputs(layout, clean, layers)
    del clean  # its cache: the corrupted prompts get theirs, repeated once per head patched side by side
    corrupted = AnswerScorer(model, [example["corrupted_prompt"] for example in examples], answers, config.answer_tokens,
                             pad_id, copies=heads_side_by_side(layout.heads, len(examples)))
    progress = Progress("iv: patching heads", len(layers), unit="layer")
    effects = head_effects(layout, corrupted, means, layers, on_layer=lambda layer: progress.update(1))
    progress.close()
    chosen = top_heads(effects, config.heads)
    vectors = layer_vectors(layout, means, chosen)
    logprob = {"clean": clean_logprob, "corrupted": corrupted.per_prompt()}
    with add_instruction_vector(model, vectors, 1.0, corrupted.last_prompt_token):
        logprob["corrupted_with_iv"] = corrupted.per_prompt()
    seconds = time.perf_counter() - started

    heads = [{"layer": layer, "head": head, "score": score} for layer, head, score in chosen]
    settings = {**config.to_dict(), "format": fmt, "layers": layers, "corruption": CORRUPTION,
                "device": device, "dtype": dtype}
    model_info = {"spec": config.model, "path": model_dir, "fingerprint": fingerprint_model(model_dir),
                  "layers": layout.layers, "heads": layout.heads, "head_dim": layout.head_dim}
    tensors = {f"layer.{layer}": vector.float().contiguous() for layer, vector in vectors.items()}
    metadata = {"format": FORMAT, "model_fingerprint": model_info["fingerprint"], "heads": json.dumps(heads),
                "settings": json.dumps(settings)}
    report = {
        "format": FORMAT,
        "method": "instruction vector (Jiang et al. 2024, arXiv 2406.12227) found by activation patching "
                  "of attention heads (function vectors, Todd et al. 2024, arXiv 2310.15213)",
        "model": model_info,
        "tokenizer": {"fingerprint": fingerprint_tokenizer(tokenizer)},
        "settings": settings,
        "heads": heads,
        "vectors": {name: {"heads": [h["head"] for h in heads if f"layer.{h['layer']}" == name],
                           "norm": float(tensor.norm())} for name, tensor in tensors.items()},
        # Sum of log p over the first answer tokens, mean over the prompts (nats).
        "answer_logprob": {name: float(values.mean()) for name, values in logprob.items()},
        "scores": [[None if torch.isnan(score) else float(score) for score in row] for row in effects],
        "prompts": [{"id": example["id"], "instruction": example["instruction"], "corrupted": example["corrupted"],
                     "answer_start": tokenizer.decode(example["answer"][: config.answer_tokens])} for example in examples],
        "seconds": seconds,
        "versions": library_versions(),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(output, save(tensors, metadata=metadata))
    write_json_atomic(sidecar_path(output), report)
    return report


def read_instruction_vector(path: str | Path) -> tuple[dict[int, torch.Tensor], dict]:
    """The vectors of an `ftprep iv` file by layer index, and its metadata (heads and settings parsed)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FtprepError(f"instruction vector not found: {path} (make one with ftprep iv INPUT -o {path.name})")
    from ftprep.manifest import open_run

    open_run(path, missing_ok=True)  # checked against its manifest, where it has one (files from before had none)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        if metadata.get("format") != FORMAT:
            raise FtprepError(f"{path} is not an instruction vector written by ftprep iv")
        vectors = {int(name.split(".", 1)[1]): handle.get_tensor(name) for name in handle.keys()}
    for key in ("heads", "settings"):
        metadata[key] = json.loads(metadata[key])
    return dict(sorted(vectors.items())), metadata


def iv_summary(output: str, report: dict) -> str:
    heads = report["heads"]
    logprob = report["answer_logprob"]
    top = ", ".join(f"L{h['layer']}H{h['head']} {h['score']:+.3f}" for h in heads[:3])
    return (f"{output}: {len(heads)} heads in {len(report['vectors'])} layers (top: {top}); answer log-prob "
            f"clean {logprob['clean']:.2f}, corrupted {logprob['corrupted']:.2f}, corrupted + IV {logprob['corrupted_with_iv']:.2f} "
            f"({report['seconds']:.0f} s); heads and scores in {sidecar_path(Path(output))}")
