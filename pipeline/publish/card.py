"""The dataset card (README.md) `ftprep push` uploads, and the histogram image it shows.

The YAML front matter is what the Hub reads: license, task, tags and `configs`, whose
`data_files` point at the Parquet files so that `load_dataset(repo, config)` and the dataset
viewer find them. The body says how the data was made (model, strategy, counts, masked share,
the perplexity histogram) and how to train on it.

Several configs may share one repo (`--config-name`): each owns one `configs` entry and one
body section between ftprep markers, and a push replaces only its own, keeping the rest of a
card that is already there (other configs, text a person wrote).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from ftprep.manifest import ModelInfo, RunManifest
from ftprep.models import EMBEDDED_MODEL_ORIGINS
from ftprep.publish.export_config import trl_snippet
from ftprep.publish.png import bar_chart, png_bytes
from ftprep.stages import flat_values, perplexity
from ftprep.stages.mask import PPL_BIN_EDGES, perplexity_histogram
from ftprep.stages.mask_settings import MaskStageSettings, describe
from ftprep.stages.strategies import STM_THRESHOLD  # what the card of a scored dataset measures against
from ftprep.writers import read_shards

SPLIT = "train"
FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", re.S)
INTRO = ("Supervised fine-tuning data prepared with ftprep: every ground-truth token is scored under "
         "the target model, and the scores become loss masks or per-token weights so that fine-tuning "
         "forgets less (low-perplexity token learning, Wu et al. 2025, arXiv 2501.14315).")


def data_dir(config_name: str) -> str:
    """Where a config's Parquet files live in the repo: `data/` for the default config, as `datasets` does."""
    return "data" if config_name == "default" else config_name


def image_path(config_name: str) -> str:
    return "ppl_histogram.png" if config_name == "default" else f"{config_name}/ppl_histogram.png"


def parquet_names(config_name: str, count: int) -> list[str]:
    return [f"{data_dir(config_name)}/{SPLIT}-{index:05d}-of-{count:05d}.parquet" for index in range(count)]


def folder_histogram(folder: Path, stats: dict) -> dict[str, int]:
    """The perplexity histogram of assistant tokens: stats.json's for a training dataset;
    a scored dataset's stats.json has none, so it is counted from the shards, one at a time."""
    if "perplexity_histogram" in stats:
        return stats["perplexity_histogram"]
    total = np.zeros(len(PPL_BIN_EDGES), dtype=np.int64)
    for table in read_shards(folder):
        logprobs = flat_values(table, "logprobs")
        scored_assistant = flat_values(table, "assistant_mask").astype(bool) & ~np.isnan(logprobs)
        total += np.array(list(perplexity_histogram(perplexity(logprobs[scored_assistant])).values()))
    return dict(zip(perplexity_histogram(np.zeros(0)), total.tolist()))


def histogram_png(histogram: dict[str, int], threshold: float | None) -> bytes:
    """The perplexity histogram as a PNG: one bar per bin (labelled by where it starts), and a
    dashed line at the threshold where the bins are uneven."""
    starts = [float(label.split("-")[0]) for label in histogram]
    marker = None if threshold is None else float(np.interp(threshold, starts, np.arange(len(starts))))
    return png_bytes(bar_chart(list(histogram.values()), [f"{start:g}" for start in starts], marker_at=marker))


def mask_settings_of(manifest: RunManifest) -> MaskStageSettings | None:
    return manifest.settings_as(MaskStageSettings) if manifest.stage == "mask" else None


def threshold_of(manifest: RunManifest) -> float | None:
    """The perplexity line the histogram draws: the mask strategy's, where it has one."""
    settings = mask_settings_of(manifest)
    return settings.rule.perplexity_line(settings) if settings is not None else None


def model_name(model: ModelInfo) -> str:
    """The model as a hub id where there is one (the embedded alias names its origin)."""
    return EMBEDDED_MODEL_ORIGINS.get(model.spec, model.spec)


def code_span(text) -> str:
    """`text` as an inline code span that stays inside its table cell, whatever it holds:
    on one line, pipes escaped, fenced by more backticks than it holds in a row."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def unmarked(text: str) -> str:
    """Text from names and paths cannot spell the comments a section is found by on the next push."""
    return text.replace("<!--", "&lt;!--")


def model_text(model: ModelInfo) -> str:
    text = code_span(model_name(model))
    if model.spec in EMBEDDED_MODEL_ORIGINS:
        text += f" (ftprep's embedded {code_span(model.spec)}: its Q4_1 GGUF file, dequantized)"
    return f"{text}, {code_span(model.backend or '?')} backend, {code_span(model.dtype or '?')}"


def source_text(manifest: RunManifest) -> str:
    """The input the rows came from: a hub dataset id, or a local file's name (not its path)."""
    source = manifest.input_source
    if source.hub is not None:
        return f"the hub dataset {code_span(source.hub)}" + (f" (split {code_span(source.split)})" if source.split else "")
    return code_span(Path(source.path).name) if source.path is not None else "unknown"


def strategy_text(manifest: RunManifest) -> str:
    if manifest.stage == "score":
        return "none: per-token scores only (logprob, entropy, rank), no labels yet"
    return describe(mask_settings_of(manifest))


def facts_table(manifest: RunManifest, stats: dict, histogram: dict[str, int], columns: list[str]) -> str:
    counts = manifest.counts
    assistant = stats.get("assistant_tokens", 0)
    rows = [
        ("model", model_text(manifest.model)),
        ("source", source_text(manifest)),
        ("strategy", strategy_text(manifest)),
        ("rows", f"{counts.rows_in:,} in, {counts.rows_out:,} out, {counts.rows_rejected:,} rejected"),
        ("assistant tokens", f"{assistant:,}"),
    ]
    if manifest.stage == "mask":
        rows.append(("masked share of assistant tokens (no loss: label -100 or weight 0)", f"{stats.get('masked_share', 0.0):.1%}"))
        if mask_settings_of(manifest).rule.makes_weights:
            rows.append(("mean weight of assistant tokens", f"{stats.get('mean_weight', 0.0):.3f}"))
            if stats.get("weight_quantiles"):
                rows.append(("weight quantiles", ", ".join(f"{name} {value:.3f}" for name, value in stats["weight_quantiles"].items())))
    else:
        above = sum(count for label, count in histogram.items() if float(label.split("-")[0]) >= STM_THRESHOLD)
        rows.append((f"share of assistant tokens above perplexity {STM_THRESHOLD:g}", f"{above / max(assistant, 1):.1%}"))
        if "assistant_perplexity" in stats:
            rows.append(("perplexity of assistant tokens", f"{stats['assistant_perplexity']:.3f}"))
    rows += [("columns", ", ".join(f"`{name}`" for name in columns)),
             ("made with", f"ftprep {manifest.ftprep_version or '?'}")]
    return "| | |\n|---|---|\n" + "".join(f"| {name} | {value} |\n" for name, value in rows)


SCORED_SNIPPET = '''\
# STM labels from the scores: -100 on assistant tokens above the threshold, as `ftprep mask` writes them.
import numpy as np
from datasets import load_dataset

END_OF_TURN_IDS = {end_of_turn_ids!r}  # stay supervised, so the model learns to stop
dataset = {load}

def stm_labels(row, threshold={threshold:g}):
    ids = np.asarray(row["input_ids"])
    assistant = np.asarray(row["assistant_mask"], dtype=bool)
    with np.errstate(over="ignore"):
        token_perplexity = np.exp(-np.asarray(row["logprobs"], dtype=np.float64))
    keep = assistant & (~(token_perplexity > threshold) | np.isin(ids, END_OF_TURN_IDS))
    return {{"attention_mask": np.ones(len(ids), dtype=np.int8), "labels": np.where(keep, ids, -100)}}

train = dataset.map(stm_labels, remove_columns=[name for name in dataset.column_names if name != "input_ids"])
'''


def usage_section(manifest: RunManifest, repo_id: str, config_name: str, columns: list[str]) -> str:
    load = f"load_dataset({repo_id!r}, {config_name!r}, split={SPLIT!r})"
    if manifest.stage == "score":
        code = SCORED_SNIPPET.format(end_of_turn_ids=list(manifest.tokenizer.end_of_turn_ids), load=load, threshold=STM_THRESHOLD)
        return f"### How to use\n\nThese are scores, not labels yet. Turn them into a training set:\n\n```python\n{code}```\n"
    code = trl_snippet(model_name(manifest.model), strategy_text(manifest), "loss_weights" in columns,
                       f"{repo_id}, config {config_name}", load, anchors="kl_mask" in columns)
    note = ("`labels` hold -100 where there is no loss (not shifted); TRL's SFTTrainer, Axolotl (`type:` left empty) "
            "and LLaMA-Factory read `input_ids`, `attention_mask` and `labels` as they are.")
    return f"### How to train\n\n{note}\n\n```python\n{code}```\n"


def card_section(manifest: RunManifest, stats: dict, histogram: dict[str, int], columns: list[str], repo_id: str,
                 config_name: str) -> str:
    """This config's part of the card body, between the markers a later push finds it by."""
    kind = "scored dataset" if manifest.stage == "score" else f"{mask_settings_of(manifest).strategy} strategy"
    bins = "".join(f"| {label} | {count:,} |\n" for label, count in histogram.items())
    inner = (f"## Config `{config_name}`: {kind}\n\n"
             f"{facts_table(manifest, stats, histogram, columns)}\n"
             f"![Perplexity of assistant tokens under the model]({image_path(config_name)})\n\n"
             f"<details><summary>Perplexity of assistant tokens (counts per bin)</summary>\n\n"
             f"| perplexity | tokens |\n|---|---|\n{bins}\n</details>\n\n"
             f"{usage_section(manifest, repo_id, config_name, columns)}")
    return f"<!-- ftprep:begin {config_name} -->\n{unmarked(inner)}<!-- ftprep:end {config_name} -->"


def card_metadata(manifest: RunManifest, config_name: str, license: str | None) -> dict:
    tags = ["ftprep", "sft"]
    if manifest.stage == "score":
        tags.append("token-scores")
    else:
        tags.append("token-weights" if mask_settings_of(manifest).rule.makes_weights else "loss-masking")
    return {
        "license": license,
        "task_categories": ["text-generation"],
        "tags": tags,
        "configs": [{"config_name": config_name, "data_files": [{"split": SPLIT, "path": f"{data_dir(config_name)}/{SPLIT}-*"}]}],
    }


def split_front_matter(text: str) -> tuple[dict, str]:
    match = FRONT_MATTER.match(text)
    if not match:
        return {}, text
    metadata = yaml.safe_load(match.group(1)) or {}
    return (metadata if isinstance(metadata, dict) else {}), text[match.end():]


def merge_metadata(existing: dict, ours: dict) -> dict:
    """Ours wins for our config entry; other configs, other keys and an existing license stay."""
    merged = dict.fromkeys(ours) | existing  # a new card gets our key order; an existing one keeps its own
    configs = [entry for entry in existing.get("configs") or [] if isinstance(entry, dict)]
    names = [entry.get("config_name") for entry in configs]
    for entry in ours["configs"]:
        if entry["config_name"] in names:
            configs[names.index(entry["config_name"])] = entry
        else:
            configs.append(entry)
    for key in ("task_categories", "tags"):
        merged[key] = list(dict.fromkeys([*(existing.get(key) or []), *ours[key]]))
    merged["license"] = ours["license"] or existing.get("license") or "other"
    merged["configs"] = configs
    return merged


def merge_body(body: str, section: str, config_name: str, title: str) -> str:
    marked = re.compile(rf"<!-- ftprep:begin {re.escape(config_name)} -->.*?<!-- ftprep:end {re.escape(config_name)} -->", re.S)
    if marked.search(body):
        return marked.sub(lambda _: section, body, count=1)
    if body.strip():
        return f"{body.rstrip()}\n\n{section}\n"
    return f"# {title}\n\n{INTRO}\n\n{section}\n"


def dataset_card(manifest: RunManifest, stats: dict, histogram: dict[str, int], columns: list[str], repo_id: str,
                 config_name: str = "default", license: str | None = None, existing: str | None = None) -> str:
    """README.md for the repo: `existing` (the card already there, if any) with this config's
    metadata and section put in. `license` None keeps the existing one (else `other`)."""
    metadata, body = split_front_matter(existing or "")
    metadata = merge_metadata(metadata, card_metadata(manifest, config_name, license))
    section = card_section(manifest, stats, histogram, columns, repo_id, config_name)
    body = merge_body(body, section, config_name, repo_id.split("/")[-1])
    return f"---\n{yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)}---\n\n{body.lstrip()}"
