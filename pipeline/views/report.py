"""`ftprep report`: one self-contained HTML page about a scored or training dataset.

Plots are inline SVG drawn here (no plotting library, no network): the perplexity histogram
(with the threshold line where a threshold applies), the masked share per row, the weight
distribution; the most masked tokens by rate and by count; the run's settings, model and
rejects; and a sortable table of rows, each shown with its masked tokens highlighted when
clicked (a few lines of plain JavaScript over the rows' tokens, embedded as JSON).

"Masked" means what it means in stats.json and the card: no loss (label -100 or weight 0).
On a scored dataset the page previews `ftprep mask --strategy threshold` by the mask's own
rule (end-of-turn tokens stay supervised).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftprep.manifest import Counts, ModelInfo, RunManifest, open_run
from ftprep.models import EMBEDDED_MODEL_ORIGINS, load_tokenizer
from ftprep.stages import flat_values, perplexity, row_offsets
from ftprep.stages.errors import FtprepError
from ftprep.stages.mask import PPL_BIN_EDGES, WEIGHT_QUANTILES, TokenView, end_of_turn_tokens, mask_candidates, threshold_preview
from ftprep.stages.mask_advice import ThresholdCurve, shard_candidate_scores
from ftprep.stages.mask_settings import MaskStageSettings, describe
from ftprep.stages.shared_tokens import shared_token_counts, what_to_do
from ftprep.stages.strategies import REGISTRY, STM_THRESHOLD, option_names, strategy_named
from ftprep.stages.strategies.threshold import STM_MASKED_SHARE
from ftprep.stages.supervision import KINDS, LOW_WEIGHT, down_weighted, token_kinds, tokens_without_loss
from ftprep.views.inspect_row import rows_mask_rejected
from ftprep.writers import read_shards

PPL_EDGES = np.array([*PPL_BIN_EDGES, np.inf])  # the bins of stats.json
TOP_TOKENS = 20
MIN_SEEN = 10  # a token's masked rate is listed only when it was seen at least this often
TABLE_ROWS = 1000  # rows in the table (evenly spread over a bigger dataset): each carries its tokens
# Each kind of token (stages.supervision.KINDS, also its CSS class) by its one-letter code in the rows' JSON.
KIND_CODES = {"prompt": "p", "kept": "k", "masked": "m", "low": "l"}


@dataclass
class ReportData:
    offsets: np.ndarray
    input_ids: np.ndarray
    assistant: np.ndarray
    perplexity: np.ndarray
    masked: np.ndarray  # no loss: label -100 or weight 0 (on scores: what the threshold would mask)
    weights: np.ndarray | None
    ids: list[str]
    rule: str
    threshold: float | None = None  # where the perplexity plot draws its line; None: no threshold applies
    curve: ThresholdCurve | None = None  # scored datasets: the masked share against the threshold
    shared_counts: dict | None = None  # scored datasets: what the preview removes of what the rows share

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def row_of_token(self) -> np.ndarray:
        return np.repeat(np.arange(self.rows), np.diff(self.offsets))

    @property
    def low(self) -> np.ndarray:
        """Down-weighted tokens: trained on, with a weight below LOW_WEIGHT."""
        return down_weighted(self.assistant, self.masked, self.weights)


def load_report_data(folder: Path, threshold: float) -> tuple[ReportData, RunManifest]:
    manifest = open_run(folder, stages=("score", "mask"), refusal=f"{folder} is not an ftprep output (no ftprep.json): "
                        "give a folder from ftprep score or ftprep mask")
    if manifest.stage == "score":
        scored_dir, rejected = folder, set()
    else:
        scored_dir = Path(manifest.scored.path)
        if open_run(scored_dir, missing_ok=True) is None:
            raise FtprepError(f"the scored dataset {scored_dir} behind {folder} is gone: the report needs its scores")
        rejected = rows_mask_rejected(folder)
    scored = _concat_scored(scored_dir, rejected)
    ppl = perplexity(scored["logprobs"])
    if manifest.stage == "score":
        masked = threshold_preview(scored["offsets"], scored["input_ids"], scored["assistant"], scored["logprobs"],
                                   manifest.tokenizer.end_of_turn_ids, threshold)
        weights, drawn = None, threshold
        rule = (f"preview of ftprep mask --threshold {threshold:g}: perplexity above {threshold:g}, "
                f"end-of-turn tokens stay supervised")
    else:
        tables = list(read_shards(folder))
        labels = np.concatenate([flat_values(t, "labels") for t in tables])
        weights = np.concatenate([flat_values(t, "loss_weights") for t in tables]) if "loss_weights" in tables[0].column_names else None
        masked = tokens_without_loss(scored["assistant"], labels, weights)
        settings = manifest.settings_as(MaskStageSettings)
        rule = describe(settings)
        drawn = settings.rule.perplexity_line(settings)
    data = ReportData(scored["offsets"], scored["input_ids"], scored["assistant"], ppl, masked, weights, scored["ids"],
                      rule, drawn)
    if manifest.stage == "score":
        view = TokenView(offsets=scored["offsets"], input_ids=scored["input_ids"], assistant=scored["assistant"],
                         logprobs=scored["logprobs"].astype(np.float32),
                         end_of_turn=end_of_turn_tokens(scored["input_ids"], scored["assistant"], manifest.tokenizer.end_of_turn_ids))
        data.curve = ThresholdCurve.of([shard_candidate_scores(view)], int(scored["assistant"].sum()))
        data.shared_counts = shared_token_counts(view.input_ids, mask_candidates(view, keep_eos=True), masked,
                                                 view.row_of_token, data.rows)
    return data, manifest


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


# --- plots ---------------------------------------------------------------------------------

def nice_ticks(top: float, most: int = 5, integer: bool = False) -> list[float]:
    """0 and round steps (1, 2 or 5 x 10^k) up to at least `top`, at most `most` + 1 ticks;
    `integer`: steps of at least 1 (an axis of counts has no tick between 0 and 1)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / most
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(factor * magnitude for factor in (1, 2, 5, 10) if factor * magnitude >= raw)
    if integer:
        step = max(step, 1)
    return [step * index for index in range(int(math.ceil(top / step - 1e-9)) + 1)]


def tick_labels(ticks: list[float]) -> list[str]:
    """The ticks as text with as many decimals as their step needs: each label is distinct."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    return [f"{value:,.{decimals}f}" for value in ticks]


def svg_bars(counts, labels, title: str, x_title: str, y_title: str, marker_at: float | None = None,
             marker_label: str = "", color: str = "#4c78a8") -> str:
    """A bar chart as inline SVG with both axes titled and ticked; `marker_at` draws a dashed
    vertical line at that bar position (bars are numbered from 0, their left edge)."""
    width, height, left, right, top_pad, bottom = 680, 280, 70, 12, 18, 56
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    counts = np.asarray(counts, dtype=float)
    ticks = nice_ticks(counts.max() if len(counts) else 0, integer=True)
    scale = plot_h / ticks[-1]
    slot = plot_w / max(len(counts), 1)
    base = top_pad + plot_h
    parts = []
    for value, text in zip(ticks, tick_labels(ticks)):  # y ticks and grid lines
        y = base - value * scale
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                     f'<line x1="{left - 4}" x2="{left}" y1="{y:.1f}" y2="{y:.1f}" stroke="#333"/>'
                     f'<text x="{left - 7}" y="{y + 3.5:.1f}" font-size="10" text-anchor="end">{text}</text>')
    for index, (count, label) in enumerate(zip(counts, labels)):
        bar_h = count * scale
        x = left + index * slot
        parts.append(f'<rect class="bar" x="{x + 2:.1f}" y="{base - bar_h:.1f}" width="{max(slot - 4, 1):.1f}" '
                     f'height="{bar_h:.1f}" fill="{color}"><title>{html.escape(str(label))}: {int(count):,}</title></rect>'
                     f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{base}" y2="{base + 4}" stroke="#333"/>'
                     f'<text x="{x:.1f}" y="{base + 15}" font-size="10" text-anchor="middle">{html.escape(str(label))}</text>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{base}" y2="{base}" stroke="#333"/>'
                 f'<line x1="{left}" x2="{left}" y1="{top_pad}" y2="{base}" stroke="#333"/>'
                 f'<text x="{left + plot_w / 2:.1f}" y="{height - 12}" font-size="12" text-anchor="middle">{html.escape(x_title)}</text>'
                 f'<text transform="translate(16 {top_pad + plot_h / 2:.1f}) rotate(-90)" font-size="12" '
                 f'text-anchor="middle">{html.escape(y_title)}</text>')
    if marker_at is not None:
        x = left + marker_at * slot
        parts.append(f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="{top_pad}" y2="{base}" stroke="#d62728" '
                     f'stroke-width="2" stroke-dasharray="5,3"/><text x="{x + 5:.1f}" y="{top_pad + 12}" font-size="11" '
                     f'fill="#d62728">{html.escape(marker_label)}</text>')
    return (f'<figure><figcaption>{html.escape(title)}</figcaption><svg class="plot" xmlns="http://www.w3.org/2000/svg" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(parts)}</svg></figure>')


def perplexity_plot(data: ReportData) -> str:
    values = data.perplexity[data.assistant & ~np.isnan(data.perplexity)]
    counts, _ = np.histogram(values, bins=PPL_EDGES)
    labels = [f"{edge:g}" for edge in PPL_EDGES[:-1]]
    marker = None
    if data.threshold is not None:
        # The line sits where the threshold falls between the bin edges (bins are uneven).
        marker = float(np.interp(data.threshold, PPL_EDGES[:-1], np.arange(len(PPL_EDGES) - 1)))
    return svg_bars(counts, labels, "Perplexity of assistant tokens", "perplexity under the model (each bin starts at its label)",
                    "assistant tokens", marker_at=marker, marker_label=f"threshold {data.threshold:g}" if marker is not None else "")


CURVE_RANGE = (1.0, 1000.0)  # the thresholds the curve spans (PPL_BIN_EDGES' range)
CURVE_TICKS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def threshold_curve_plot(curve: ThresholdCurve) -> str:
    """The share of assistant tokens `ftprep mask --threshold T` masks, against T on a log axis,
    with the paper's T = 2.5 and the 21-24 % it masks on the paper's data marked."""
    width, height, left, right, top_pad, bottom = 680, 280, 70, 12, 18, 56
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    base = top_pad + plot_h
    low, high = np.log10(CURVE_RANGE)

    def x_of(threshold):
        return left + (np.log10(threshold) - low) / (high - low) * plot_w

    def y_of(share):
        return base - share * plot_h

    parts = []
    band_low, band_high = STM_MASKED_SHARE
    parts.append(f'<rect class="band" x="{left}" y="{y_of(band_high):.1f}" width="{plot_w}" '
                 f'height="{y_of(band_low) - y_of(band_high):.1f}" fill="#d62728" fill-opacity="0.15"/>'
                 f'<text x="{width - right - 4}" y="{y_of(band_high) - 4:.1f}" font-size="10" text-anchor="end" fill="#d62728">'
                 f'the paper: {band_low:.0%}-{band_high:.0%} masked at {STM_THRESHOLD:g}</text>')
    for share in np.linspace(0, 1, 6):  # y ticks every 20 %
        y = y_of(share)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                     f'<line x1="{left - 4}" x2="{left}" y1="{y:.1f}" y2="{y:.1f}" stroke="#333"/>'
                     f'<text x="{left - 7}" y="{y + 3.5:.1f}" font-size="10" text-anchor="end">{share:.0%}</text>')
    for tick in CURVE_TICKS:
        x = x_of(tick)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{base}" y2="{base + 4}" stroke="#333"/>'
                     f'<text x="{x:.1f}" y="{base + 15}" font-size="10" text-anchor="middle">{tick:g}</text>')
    thresholds = np.geomspace(*CURVE_RANGE, 200)
    points = " ".join(f"{x_of(t):.1f},{y_of(s):.1f}" for t, s in zip(thresholds, curve.masked_share(thresholds)))
    parts.append(f'<polyline class="curve" points="{points}" fill="none" stroke="#4c78a8" stroke-width="2"/>')
    here = float(curve.masked_share([STM_THRESHOLD])[0])
    x = x_of(STM_THRESHOLD)
    parts.append(f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="{top_pad}" y2="{base}" stroke="#d62728" '
                 f'stroke-width="2" stroke-dasharray="5,3"/><circle cx="{x:.1f}" cy="{y_of(here):.1f}" r="4" fill="#d62728"/>'
                 f'<text x="{x + 6:.1f}" y="{y_of(here) - 6:.1f}" font-size="11" fill="#d62728">STM {STM_THRESHOLD:g}: '
                 f'{here:.1%} here</text>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{base}" y2="{base}" stroke="#333"/>'
                 f'<line x1="{left}" x2="{left}" y1="{top_pad}" y2="{base}" stroke="#333"/>'
                 f'<text x="{left + plot_w / 2:.1f}" y="{height - 12}" font-size="12" text-anchor="middle">'
                 f'threshold T (perplexity, log scale)</text>'
                 f'<text transform="translate(16 {top_pad + plot_h / 2:.1f}) rotate(-90)" font-size="12" '
                 f'text-anchor="middle">assistant tokens masked</text>')
    title = ("Masked share against the threshold: what ftprep mask --threshold T masks (end-of-turn tokens stay "
             "supervised)")
    return (f'<figure><figcaption>{html.escape(title)}</figcaption><svg class="plot curve" xmlns="http://www.w3.org/2000/svg" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(parts)}</svg></figure>')


def shared_tokens_note(folder: Path, manifest: RunManifest, data: ReportData, tokenizer) -> str:
    """The shared-token warning (or what --keep-shared kept) as one paragraph; "" where there is none."""
    from ftprep.shared_phrases import notes, shared_tokens_stats

    if data.shared_counts is not None:
        looser = strategy_named("threshold").looser
        stats = shared_tokens_stats(data.shared_counts, data.rows, lambda: tokenizer,
                                    f"--threshold {data.threshold:g} would remove", what_to_do(looser, True))
    else:
        try:
            stats = json.loads((folder / "stats.json").read_text())
        except (OSError, ValueError):
            stats = {}
    lines = notes(stats) if isinstance(stats, dict) else []
    return "".join(f'<p class="{"warning" if line.startswith("warning:") else "note"}">{html.escape(line)}</p>' for line in lines)


def row_numbers(data: ReportData) -> dict[str, np.ndarray]:
    """Per row: tokens, assistant tokens, masked tokens, and the mean perplexity of its scored
    assistant tokens (exp of their mean -logprob; NaN where none was scored)."""
    rows = data.row_of_token
    scored = data.assistant & ~np.isnan(data.perplexity)
    scored_count = np.bincount(rows[scored], minlength=data.rows)
    log_sum = np.bincount(rows[scored], weights=np.log(data.perplexity[scored]), minlength=data.rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_ppl = np.exp(log_sum / scored_count)
    return {
        "tokens": np.diff(data.offsets),
        "assistant": np.bincount(rows[data.assistant], minlength=data.rows),
        "masked": np.bincount(rows[data.masked], minlength=data.rows),
        "mean_ppl": np.where(scored_count > 0, mean_ppl, np.nan),
    }


def masked_share_plot(data: ReportData, numbers: dict) -> str:
    share = numbers["masked"] / np.maximum(numbers["assistant"], 1)
    counts, edges = np.histogram(share, bins=10, range=(0, 1))
    return svg_bars(counts, [f"{edge:.0%}" for edge in edges[:-1]], "Masked share per row (no loss: label -100 or weight 0)",
                    "share of the row's assistant tokens masked (each bin starts at its label)", "rows", color="#f58518")


def weight_plot(data: ReportData) -> str:
    if data.weights is None:
        return "<p>No per-token weights in this dataset (hard masks only).</p>"
    counts, edges = np.histogram(data.weights[data.assistant], bins=10, range=(0, 1))
    counts[-1] += int((data.weights[data.assistant] > 1).sum())
    return svg_bars(counts, [f"{edge:.1f}" for edge in edges[:-1]], "Loss weights of assistant tokens",
                    "loss weight (each bin starts at its label; 1.0 included in the last)", "assistant tokens", color="#54a24b")


# --- tables --------------------------------------------------------------------------------

def masked_token_counts(data: ReportData):
    """Per token id over the assistant tokens: how often it is seen, how often masked, and the share."""
    import polars as pl

    frame = pl.DataFrame({"token": data.input_ids[data.assistant], "masked": data.masked[data.assistant]})
    return (frame.group_by("token").agg(seen=pl.len(), masked=pl.col("masked").sum())
            .with_columns(share=pl.col("masked") / pl.col("seen")))


def top_masked_tables(data: ReportData, tokenizer, count: int = TOP_TOKENS) -> str:
    """The most masked tokens two ways: by rate (masked / seen, among tokens seen at least
    MIN_SEEN times), which shows what the rule singles out, and by count, which punctuation
    and common words lead because they are everywhere."""
    import polars as pl

    counts = masked_token_counts(data).filter(pl.col("masked") > 0)
    by_rate = counts.filter(pl.col("seen") >= MIN_SEEN).sort(["share", "masked", "token"], descending=[True, True, False]).head(count)
    by_count = counts.sort(["masked", "token"], descending=[True, False]).head(count)

    def table(frame, caption: str) -> str:
        rows = "".join(f"<tr><td><code>{html.escape(repr(tokenizer.decode([token])))}</code></td><td>{share:.0%}</td>"
                       f"<td>{masked:,}</td><td>{seen:,}</td></tr>"
                       for token, masked, seen, share in frame.select("token", "masked", "seen", "share").iter_rows())
        body = rows or f'<tr><td colspan="4">no masked token seen {MIN_SEEN} times or more</td></tr>'
        return (f'<table class="top"><caption>{html.escape(caption)}</caption><tr><th>token</th><th>masked rate</th>'
                f'<th>times masked</th><th>seen</th></tr>{body}</table>')

    return (f'<div class="pair">{table(by_rate, f"by rate (masked / seen, tokens seen {MIN_SEEN} times or more)")}'
            f'{table(by_count, "by count")}</div>')


def weight_summary(data: ReportData) -> str:
    if data.weights is None:
        return ""
    weights = data.weights[data.assistant]
    # The quantiles stats.json reports, here exact (the report holds every weight).
    quantiles = np.quantile(weights, WEIGHT_QUANTILES) if len(weights) else np.zeros(len(WEIGHT_QUANTILES))
    spread = ", ".join(f"p{round(q * 100)} {value:.3f}" for q, value in zip(WEIGHT_QUANTILES, quantiles))
    low = data.low.sum() / max(int(data.assistant.sum()), 1)
    return (f"<p>Loss weights of assistant tokens: mean {weights.mean() if len(weights) else 0:.3f}; {spread}; "
            f"{low:.1%} down-weighted below {LOW_WEIGHT:g} (trained on, so not counted as masked).</p>")


def model_line(model: ModelInfo | None) -> str:
    spec = model.spec if model else "?"
    origin = f" ({EMBEDDED_MODEL_ORIGINS[spec]}, dequantized from its embedded GGUF)" if spec in EMBEDDED_MODEL_ORIGINS else ""
    return f"{spec}{origin}, {(model and model.backend) or '?'} backend, {(model and model.dtype) or '?'}"


def settings_table(folder: Path, manifest: RunManifest) -> str:
    """The model, each command's settings, and the rows in, out and rejected by reason."""
    steps = [(manifest.stage, folder, manifest)]
    if manifest.stage == "mask":
        scored_dir = Path(manifest.scored.path)
        steps.insert(0, ("score", scored_dir, open_run(scored_dir)))
    rows = [("model", model_line(manifest.model))]
    for stage, where, step in steps:
        config = ", ".join(f"{key}={value}" for key, value in relevant_settings(step).items())
        counts = step.counts or Counts()
        rows.append((f"{stage} settings", config))
        rows.append((f"{stage} rows", f"{counts.rows_in:,} in, {counts.rows_out:,} out, {counts.rows_rejected:,} rejected"))
        for reason, count in sorted(_reject_reasons(where).items(), key=lambda item: (-item[1], item[0])):
            rows.append((f"{stage} rejects", f"{count:,} × {reason} (see {where / 'rejects.jsonl'})"))
    body = "".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>" for name, value in rows)
    return f'<table class="settings">{body}</table>'


def relevant_settings(manifest: RunManifest) -> dict:
    """The settings given or in effect, without other strategies' options (a soft run's
    --threshold did nothing) and without options left unset."""
    others = set()
    if manifest.stage == "mask":
        chosen = manifest.settings_as(MaskStageSettings).rule
        others = {option for other in REGISTRY.values() for option in option_names(other)} - set(option_names(chosen))
    return {key: value for key, value in manifest.config.items() if value is not None and key not in others}


def _reject_reasons(folder: Path) -> dict:
    try:
        reasons = json.loads((folder / "stats.json").read_text()).get("reject_reasons", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return reasons if isinstance(reasons, dict) else {}


def shown_rows(total: int, limit: int = TABLE_ROWS) -> np.ndarray:
    """All rows, or `limit` of them evenly spread over the dataset."""
    if total <= limit:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, limit).round().astype(np.int64))


def rows_payload(data: ReportData, numbers: dict, tokenizer, rows: np.ndarray) -> dict:
    """What the page's script needs to show a row: each token as an index into `pieces` (the
    decoded text of each distinct token), its kind (p prompt, k kept, m masked, l down-weighted)
    and its perplexity."""
    positions = np.concatenate([np.arange(data.offsets[row], data.offsets[row + 1]) for row in rows])
    distinct, piece_of = np.unique(data.input_ids[positions], return_inverse=True)
    kinds = np.array([KIND_CODES[kind] for kind in KINDS])[data_kinds(data)]
    payload, cursor = [], 0
    for row in rows:
        length = int(data.offsets[row + 1] - data.offsets[row])
        span = slice(data.offsets[row], data.offsets[row + 1])
        ppl = data.perplexity[span]
        payload.append({"row": int(row), "id": data.ids[row], "masked": int(numbers["masked"][row]),
                        "t": piece_of[cursor:cursor + length].tolist(), "k": "".join(kinds[span]),
                        "p": [None if np.isnan(value) else float(f"{value:.3g}") for value in ppl]})
        cursor += length
    return {"pieces": [tokenizer.decode([int(token)]) for token in distinct], "rows": payload,
            "kinds": {code: kind for kind, code in KIND_CODES.items()}}


def data_kinds(data: ReportData) -> np.ndarray:
    """Per token, its index in KINDS (stages.supervision's rule)."""
    return token_kinds(data.assistant, data.masked, data.low)


def row_table(data: ReportData, numbers: dict, rows: np.ndarray) -> str:
    """The sortable table; each cell's data-v holds the value it sorts by."""
    lines = []
    for index, row in enumerate(rows):
        share = numbers["masked"][row] / max(numbers["assistant"][row], 1)
        ppl = numbers["mean_ppl"][row]
        lines.append(f'<tr data-i="{index}"><td data-v="{row}">{row}</td><td data-v="{html.escape(data.ids[row], quote=True)}">'
                     f'{html.escape(data.ids[row])}</td><td data-v="{numbers["tokens"][row]}">{numbers["tokens"][row]:,}</td>'
                     f'<td data-v="{numbers["assistant"][row]}">{numbers["assistant"][row]:,}</td>'
                     f'<td data-v="{share:.6f}">{share:.1%}</td>'
                     f'<td data-v="{-1 if np.isnan(ppl) else ppl:.6f}">{"–" if np.isnan(ppl) else f"{ppl:.2f}"}</td></tr>')
    head = "".join(f'<th data-type="{kind}" title="click to sort">{name}</th>' for name, kind in (
        ("row", "n"), ("id", "s"), ("tokens", "n"), ("assistant tokens", "n"), ("masked share", "n"), ("mean perplexity", "n")))
    return f'<div class="scroll"><table id="rows" class="rows"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table></div>'


def row_html(data: ReportData, row: int, tokenizer) -> str:
    """One row with its tokens marked, as the page shows it before any click (the same markup
    the script builds)."""
    spans, kinds = [], data_kinds(data)
    for position in range(data.offsets[row], data.offsets[row + 1]):
        ppl = data.perplexity[position]
        title = f' title="perplexity {ppl:.3g}"' if not np.isnan(ppl) else ""
        spans.append(f'<span class="{KINDS[kinds[position]]}"{title}>'
                     f'{html.escape(tokenizer.decode([int(data.input_ids[position])]))}</span>')
    return "".join(spans)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}figure{margin:1em 0}
p.warning{background:#fdecea;border-left:4px solid #d62728;padding:.5em .8em}p.note{border-left:4px solid #4c78a8;padding:.5em .8em}
figcaption{font-weight:600;margin-bottom:.3em}pre.row{white-space:pre-wrap;background:#f7f7f7;padding:1em;margin-top:.3em}
.prompt{color:#888}.masked{background:#f8c4c4;color:#900;text-decoration:line-through}.low{background:#fde9a9}
table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:left}caption{text-align:left;font-weight:600;padding:.3em 0}
.pair{display:flex;gap:3em;flex-wrap:wrap;align-items:flex-start}table.settings th{vertical-align:top;white-space:nowrap}
table.settings td{font-family:ui-monospace,monospace;font-size:90%}
.scroll{max-height:24em;overflow-y:auto;border:1px solid #ddd}table.rows thead th{position:sticky;top:0;background:#eee;cursor:pointer}
table.rows tbody tr{cursor:pointer}table.rows tbody tr:hover{background:#eef3fa}table.rows tbody tr.selected{background:#d7e5f7}
table.rows th.asc::after{content:" \\25B2"}table.rows th.desc::after{content:" \\25BC"}"""

# Plain JavaScript, no library: sort the table by a clicked header, show a clicked row's
# tokens. #row=N opens row N and #sort=COLUMN sorts by that column, largest first.
SCRIPT = """(function(){
const data=JSON.parse(document.getElementById('row-data').textContent);
const table=document.getElementById('rows'),body=table.tBodies[0],view=document.getElementById('row-view');
const head=document.getElementById('row-head'),names=data.kinds;
function show(i){const r=data.rows[i];view.textContent='';
 for(let j=0;j<r.t.length;j++){const s=document.createElement('span');s.className=names[r.k[j]];
  s.textContent=data.pieces[r.t[j]];if(r.p[j]!==null)s.title='perplexity '+r.p[j];view.appendChild(s);}
 head.textContent='row '+r.row+' · id '+r.id+' · '+r.masked+' masked';
 for(const tr of body.rows)tr.classList.toggle('selected',tr.dataset.i==String(i));}
function sort(col,desc){const numeric=table.tHead.rows[0].cells[col].dataset.type==='n';
 const rows=Array.from(body.rows);rows.sort(function(a,b){const x=a.cells[col].dataset.v,y=b.cells[col].dataset.v;
  const c=numeric?(parseFloat(x)-parseFloat(y)):x.localeCompare(y);return desc?-c:c;});
 for(const r of rows)body.appendChild(r);
 for(const th of table.tHead.rows[0].cells)th.classList.remove('asc','desc');
 table.tHead.rows[0].cells[col].classList.add(desc?'desc':'asc');}
Array.from(table.tHead.rows[0].cells).forEach(function(th,col){th.addEventListener('click',function(){
 sort(col,!th.classList.contains('desc'));});});
body.addEventListener('click',function(e){const tr=e.target.closest('tr');if(tr)show(+tr.dataset.i);});
const hash=new URLSearchParams(location.hash.slice(1));
if(hash.has('sort')){const col=Array.from(table.tHead.rows[0].cells).findIndex(function(th){return th.textContent===hash.get('sort');});
 if(col>=0)sort(col,true);}
if(hash.has('row')){const i=data.rows.findIndex(function(r){return r.row===+hash.get('row');});if(i>=0)show(i);}
})();"""


def script_json(value) -> str:
    """JSON that cannot end the <script> element it sits in."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/").replace("<!--", "<\\!--")


def render_report(folder: Path, threshold: float = STM_THRESHOLD) -> str:
    data, manifest = load_report_data(folder, threshold)
    tokenizer = load_tokenizer(manifest.model.path)
    numbers = row_numbers(data)
    assistant = int(data.assistant.sum())
    share = data.masked.sum() / max(assistant, 1)
    summary = (f"{data.rows:,} rows, {assistant:,} assistant tokens, {share:.1%} masked, that is without loss "
               f"(label -100 or weight 0). Rule: {html.escape(data.rule)}.")
    rows = shown_rows(data.rows)
    first = int(rows[np.argmax(numbers["masked"][rows])])  # shown before any click: the most masked row
    which = (f"all {data.rows:,} rows" if len(rows) == data.rows
             else f"{len(rows):,} of {data.rows:,} rows, evenly spread over the dataset")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ftprep report: {html.escape(folder.name)}</title>"
            f"<style>{STYLE}</style></head><body><h1>ftprep report: {html.escape(str(folder))}</h1><p>{summary}</p>"
            f"{weight_summary(data)}{shared_tokens_note(folder, manifest, data, tokenizer)}"
            f"<h2>Run</h2>{settings_table(folder, manifest)}"
            f"<h2>Distributions</h2>{threshold_curve_plot(data.curve) if data.curve is not None else ''}"
            f"{perplexity_plot(data)}{masked_share_plot(data, numbers)}{weight_plot(data)}"
            f"<h2>Most masked tokens</h2>{top_masked_tables(data, tokenizer)}"
            f"<h2>Rows</h2><p>{which}; click a header to sort, a row to show it below "
            f"(grey: prompt · struck red: masked · yellow: weight below {LOW_WEIGHT:g} · plain: trained on; "
            f"hover a token for its perplexity).</p>{row_table(data, numbers, rows)}"
            f"<h3 id='row-head'>row {first} · id {html.escape(data.ids[first])} · {int(numbers['masked'][first])} masked</h3>"
            f"<pre class='row' id='row-view'>{row_html(data, first, tokenizer)}</pre>"
            f"<script type='application/json' id='row-data'>{script_json(rows_payload(data, numbers, tokenizer, rows))}</script>"
            f"<script>{SCRIPT}</script></body></html>")
