"""`ftprep report`: one self-contained HTML page about a scored or training dataset.

Plots are inline SVG drawn here (no plotting library, no network): the perplexity histogram
with the threshold line, the masked share per row, the weight distribution, the most often
masked tokens and three example rows with their masked tokens highlighted.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftprep.inspection import rows_mask_rejected
from ftprep.models import load_tokenizer
from ftprep.stages import flat_values, perplexity, row_offsets
from ftprep.stages.errors import FtprepError
from ftprep.stages.mask import PPL_BIN_EDGES
from ftprep.stages.strategies import describe
from ftprep.writers import read_manifest, read_shards

PPL_EDGES = np.array([*PPL_BIN_EDGES, np.inf])  # the bins of stats.json
EXAMPLE_ROWS = 3
LOW_WEIGHT = 0.5


@dataclass
class ReportData:
    offsets: np.ndarray
    input_ids: np.ndarray
    assistant: np.ndarray
    perplexity: np.ndarray
    masked: np.ndarray
    weights: np.ndarray | None
    ids: list[str]
    rule: str


def load_report_data(folder: Path, threshold: float) -> tuple[ReportData, dict]:
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("stage") not in ("score", "mask"):
        raise FtprepError(f"{folder} is not an ftprep output (no ftprep.json): give a folder from ftprep score or ftprep mask")
    if manifest["stage"] == "score":
        scored_dir, rejected = folder, set()
    else:
        scored_dir = Path(manifest["scored"]["path"])
        if read_manifest(scored_dir) is None:
            raise FtprepError(f"the scored dataset {scored_dir} behind {folder} is gone: the report needs its scores")
        rejected = rows_mask_rejected(folder)
    scored = _concat_scored(scored_dir, rejected)
    ppl = perplexity(scored["logprobs"])
    if manifest["stage"] == "score":
        masked = scored["assistant"] & (ppl > threshold)
        weights, rule = None, f"perplexity > {threshold:g}"
    else:
        tables = list(read_shards(folder))
        labels = np.concatenate([flat_values(t, "labels") for t in tables])
        weights = np.concatenate([flat_values(t, "loss_weights") for t in tables]) if "loss_weights" in tables[0].column_names else None
        if manifest["config"]["strategy"] == "soft":  # nothing is masked: show the down-weighted tokens instead
            masked = scored["assistant"] & (weights < LOW_WEIGHT)
            rule = f"{describe(manifest['config'])}; marked: weight < {LOW_WEIGHT:g}"
        else:
            masked = scored["assistant"] & (labels == -100)
            rule = describe(manifest["config"])
        threshold = manifest["config"].get("threshold", threshold)
    data = ReportData(scored["offsets"], scored["input_ids"], scored["assistant"], ppl, masked, weights, scored["ids"], rule)
    return data, {**manifest, "threshold": threshold}


def _concat_scored(scored_dir: Path, rejected: set[int]) -> dict:
    parts, first_row = [], 0
    for table in read_shards(scored_dir):
        keep = [row for row in range(table.num_rows) if first_row + row not in rejected]
        first_row += table.num_rows
        if keep:
            parts.append(table.take(keep) if len(keep) < table.num_rows else table)
    if not parts:
        raise FtprepError(f"{scored_dir} has no rows to report on")
    lengths = np.concatenate([np.diff(row_offsets(t)) for t in parts])
    return {
        "offsets": np.concatenate([[0], np.cumsum(lengths)]),
        "input_ids": np.concatenate([flat_values(t, "input_ids") for t in parts]),
        "assistant": np.concatenate([flat_values(t, "assistant_mask") for t in parts]).astype(bool),
        "logprobs": np.concatenate([flat_values(t, "logprobs") for t in parts]),
        "ids": [row_id for t in parts for row_id in t.column("id").to_pylist()],
    }


def svg_bars(counts, labels, title: str, marker_at: float | None = None, color: str = "#4c78a8") -> str:
    """A bar chart as inline SVG; `marker_at` draws a vertical line at that bar position."""
    width, height, left, bottom = 640, 240, 48, 40
    counts = np.asarray(counts, dtype=float)
    top = counts.max() if len(counts) and counts.max() > 0 else 1.0
    slot = (width - left - 10) / max(len(counts), 1)
    bars, ticks = [], []
    for index, (count, label) in enumerate(zip(counts, labels)):
        bar_height = (height - bottom - 20) * count / top
        x = left + index * slot
        bars.append(f'<rect class="bar" x="{x + 2:.1f}" y="{height - bottom - bar_height:.1f}" width="{slot - 4:.1f}" '
                    f'height="{bar_height:.1f}" fill="{color}"><title>{html.escape(str(label))}: {int(count)}</title></rect>')
        ticks.append(f'<text x="{x + slot / 2:.1f}" y="{height - bottom + 14}" font-size="9" text-anchor="middle">{html.escape(str(label))}</text>')
    marker = ""
    if marker_at is not None:
        x = left + marker_at * slot
        marker = (f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="14" y2="{height - bottom}" stroke="#d62728" stroke-width="2" '
                  f'stroke-dasharray="5,3"/><text x="{x + 4:.1f}" y="24" font-size="11" fill="#d62728">threshold</text>')
    return (f'<figure><figcaption>{html.escape(title)}</figcaption><svg class="plot" xmlns="http://www.w3.org/2000/svg" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f'<line x1="{left}" x2="{width - 10}" y1="{height - bottom}" y2="{height - bottom}" stroke="#333"/>'
            f'<text x="4" y="24" font-size="10">{int(top)}</text>{"".join(bars)}{"".join(ticks)}{marker}</svg></figure>')


def perplexity_plot(data: ReportData, threshold: float) -> str:
    values = data.perplexity[data.assistant & ~np.isnan(data.perplexity)]
    counts, _ = np.histogram(values, bins=PPL_EDGES)
    labels = [f"{edge:g}" for edge in PPL_EDGES[:-1]]
    # The threshold line sits where it falls between the bin edges (bins are uneven).
    position = np.interp(threshold, PPL_EDGES[:-1], np.arange(len(PPL_EDGES) - 1))
    return svg_bars(counts, labels, "Perplexity of assistant tokens (bins start at the label)", marker_at=position)


def masked_share_plot(data: ReportData) -> str:
    rows = np.repeat(np.arange(len(data.offsets) - 1), np.diff(data.offsets))
    assistant_per_row = np.bincount(rows[data.assistant], minlength=len(data.offsets) - 1)
    masked_per_row = np.bincount(rows[data.masked], minlength=len(data.offsets) - 1)
    share = masked_per_row / np.maximum(assistant_per_row, 1)
    counts, edges = np.histogram(share, bins=10, range=(0, 1))
    return svg_bars(counts, [f"{edge:.0%}" for edge in edges[:-1]], "Masked share of assistant tokens, per row (number of rows)", color="#f58518")


def weight_plot(data: ReportData) -> str:
    if data.weights is None:
        return "<p>No per-token weights in this dataset (hard masks only).</p>"
    counts, edges = np.histogram(data.weights[data.assistant], bins=10, range=(0, 1))
    return svg_bars(counts, [f"{edge:.1f}" for edge in edges[:-1]], "Weights of assistant tokens", color="#54a24b")


def masked_token_counts(data: ReportData):
    """Per token id over the assistant tokens: how often it is seen, how often masked, and the share."""
    import polars as pl

    frame = pl.DataFrame({"token": data.input_ids[data.assistant], "masked": data.masked[data.assistant]})
    return (frame.group_by("token").agg(seen=pl.len(), masked=pl.col("masked").sum())
            .with_columns(share=pl.col("masked") / pl.col("seen")))


def top_masked_table(data: ReportData, tokenizer, count: int = 20) -> str:
    import polars as pl

    top = (masked_token_counts(data).filter(pl.col("masked") > 0)
           .sort(["masked", "token"], descending=[True, False]).head(count))
    rows = "".join(f"<tr><td><code>{html.escape(repr(tokenizer.decode([token])))}</code></td><td>{masked}</td><td>{seen}</td>"
                   f"<td>{share:.0%}</td></tr>" for token, masked, seen, share in top.select("token", "masked", "seen", "share").iter_rows())
    return f'<table class="top"><tr><th>token</th><th>times masked</th><th>seen</th><th>share masked</th></tr>{rows}</table>'


def example_rows(data: ReportData, tokenizer) -> str:
    rows = np.repeat(np.arange(len(data.offsets) - 1), np.diff(data.offsets))
    masked_per_row = np.bincount(rows[data.masked], minlength=len(data.offsets) - 1)
    chosen = np.argsort(-masked_per_row, kind="stable")[:EXAMPLE_ROWS]
    blocks = []
    for row in sorted(chosen):
        start, end = data.offsets[row], data.offsets[row + 1]
        spans = []
        for position in range(start, end):
            text = html.escape(tokenizer.decode([int(data.input_ids[position])]))
            kind = "masked" if data.masked[position] else ("kept" if data.assistant[position] else "prompt")
            spans.append(f'<span class="{kind}" title="ppl {data.perplexity[position]:.2f}">{text}</span>')
        blocks.append(f'<h3>row {row} · id {html.escape(data.ids[row])} · {int(masked_per_row[row])} masked</h3><pre class="row">{"".join(spans)}</pre>')
    return "".join(blocks)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}figure{margin:1em 0}
figcaption{font-weight:600;margin-bottom:.3em}pre.row{white-space:pre-wrap;background:#f7f7f7;padding:1em}
.prompt{color:#888}.masked{background:#f8c4c4;color:#900;text-decoration:line-through}
table.top td,table.top th{padding:.2em .8em;text-align:left}"""


def render_report(folder: Path, threshold: float = 2.5) -> str:
    data, manifest = load_report_data(folder, threshold)
    tokenizer = load_tokenizer(manifest["model"]["path"])
    assistant = int(data.assistant.sum())
    share = data.masked.sum() / max(assistant, 1)
    summary = (f"{len(data.offsets) - 1} rows, {assistant} assistant tokens, {share:.1%} masked ({html.escape(data.rule)}); "
               f"model {html.escape(manifest['model']['spec'])}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ftprep report: {html.escape(folder.name)}</title>"
            f"<style>{STYLE}</style></head><body><h1>ftprep report: {html.escape(str(folder))}</h1><p>{summary}</p>"
            f"{perplexity_plot(data, manifest['threshold'])}{masked_share_plot(data)}{weight_plot(data)}"
            f"<h2>Most often masked tokens</h2>{top_masked_table(data, tokenizer)}"
            f"<h2>Example rows</h2><p>grey: prompt · struck red: masked · plain: trained on</p>{example_rows(data, tokenizer)}"
            f"</body></html>")
