"""`ftprep report`: a self-contained page whose plots, tables and row view a real browser shows."""

import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import load_table, run_cli

from ftprep.views.report import MIN_SEEN

CHROMIUM = shutil.which("chromium")
# The flags a closed network needs (no background calls) and root needs (no sandbox).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
COLORS = {"perplexity bars": (0x4C, 0x78, 0xA8), "masked-share bars": (0xF5, 0x85, 0x18),
          "weight bars": (0x54, 0xA2, 0x4B), "threshold line": (0xD6, 0x27, 0x28),
          "masked tokens": (0xF8, 0xC4, 0xC4), "down-weighted tokens": (0xFD, 0xE9, 0xA9)}
EOT = 2  # <|im_end|> in SmolLM2


def chromium(*args, profile, timeout=120):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: scripts/setup-venv.sh installs Debian's chromium")
        pytest.skip("chromium is not installed")
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], check=True,
                          capture_output=True, timeout=timeout, text=True)


def screenshot(page, png, profile, fragment=""):
    chromium("--window-size=1100,4200", f"--screenshot={png}", page.resolve().as_uri() + fragment, profile=profile)
    from PIL import Image

    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def rendered_dom(page, profile, fragment=""):
    """The page's DOM after its script ran, as the browser holds it."""
    return chromium("--dump-dom", page.resolve().as_uri() + fragment, profile=profile).stdout


def pixels_of(image, color):
    return int((np.abs(image - np.array(color)).sum(axis=-1) < 12).sum())


def row_payload(text):
    return json.loads(re.search(r"<script type='application/json' id='row-data'>(.*?)</script>", text, re.S)[1])


@pytest.mark.parametrize("strategy", ["threshold", "soft"])
@pytest.mark.slow
def test_report_page_shows_its_plots_tables_and_a_row(scored_sample, tmp_path, strategy):
    train, page = tmp_path / "train", tmp_path / "report.html"
    run_cli("mask", scored_sample, "-o", train, "--strategy", strategy)
    assert "wrote" in run_cli("report", train, "-o", page).stdout
    text = page.read_text()
    # Self-contained: nothing fetched (the script is inline, the only URL is SVG's namespace).
    assert " src=" not in text and "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert text.count('<svg class="plot"') == (3 if strategy == "soft" else 2)
    assert text.count('class="threshold"') == (1 if strategy == "threshold" else 0)  # no line where no threshold applies
    assert "assistant tokens</text>" in text and ">perplexity under the model" in text  # axes are titled
    stats = json.loads((train / "stats.json").read_text())
    assert f"{stats['masked_share']:.1%} masked" in text  # one meaning of masked: the stats' share
    assert "mask settings</th>" in text and f"strategy={strategy}" in text and "model</th>" in text
    if strategy == "soft":
        assert "p50" in text and "threshold=" not in text  # weight quantiles; no setting the strategy ignores

    payload = row_payload(text)
    assert len(payload["rows"]) == len(load_table(train)) == text.count("<tr data-i=")

    image = screenshot(page, tmp_path / "report.png", tmp_path / "profile")
    seen = {name: pixels_of(image, color) for name, color in COLORS.items()}
    print(strategy, seen)
    assert seen["perplexity bars"] > 2000 and seen["masked-share bars"] > 500
    assert (seen["threshold line"] > 100) == (strategy == "threshold")
    assert (seen["weight bars"] > 2000) == (strategy == "soft")
    # The row shown before any click has its marked tokens highlighted.
    assert seen["masked tokens" if strategy == "threshold" else "down-weighted tokens"] > 300


@pytest.mark.slow
def test_top_masked_tokens_by_rate_and_by_count(scored_sample, tmp_path):
    train, page = tmp_path / "train", tmp_path / "report.html"
    run_cli("mask", scored_sample, "-o", train)
    run_cli("report", train, "-o", page)
    text = page.read_text()
    by_rate, by_count = re.findall(r'<table class="top">(.*?)</table>', text, re.S)
    assert "by rate" in by_rate and "by count" in by_count
    cells = [[int(value.replace(",", "")) for value in re.findall(r"<td>([\d,]+)</td>", row)]
             for row in re.findall(r"<tr><td><code>.*?</tr>", by_rate)]
    assert len(cells) > 5 and all(seen >= MIN_SEEN for _, seen in cells)
    rates = [masked / seen for masked, seen in cells]
    assert rates == sorted(rates, reverse=True)
    counts = [int(value.replace(",", "")) for value in re.findall(r"</td><td>[\d%]+</td><td>([\d,]+)</td>", by_count)]
    assert counts == sorted(counts, reverse=True) and counts[0] >= max(masked for masked, _ in cells)


@pytest.mark.slow
def test_clicking_and_sorting_rows_in_a_browser(scored_sample, tmp_path):
    """The script runs: #row=N shows row N, highlighted (what a click on its line does), and
    #sort=COLUMN sorts the table by it (what a click on the header does)."""
    train, page = tmp_path / "train", tmp_path / "report.html"
    run_cli("mask", scored_sample, "-o", train)
    run_cli("report", train, "-o", page)
    dom = rendered_dom(page, tmp_path / "profile", "#row=5&sort=masked%20share")
    labels = np.array(load_table(train).column("labels")[5].as_py())
    kinds = np.array(list(row_payload(page.read_text())["rows"][5]["k"]))
    # Struck red exactly where the training row has -100 outside the prompt.
    assert ((labels == -100) & (kinds != "p")).sum() > 0
    np.testing.assert_array_equal(kinds == "m", (labels == -100) & (kinds != "p"))
    assert re.search(r'<h3 id="row-head">row 5 · id [^<]+ · (\d+) masked</h3>', dom)[1] == str((kinds == "m").sum())
    view = re.search(r'<pre class="row" id="row-view">(.*?)</pre>', dom, re.S)[1]
    assert view.count("<span") == len(labels) and view.count('class="masked"') == (kinds == "m").sum()
    assert re.search(r'<tr data-i="5" class="selected">', dom)
    shares = [float(value) for value in re.findall(r'<tr data-i="\d+"[^>]*>(?:<td[^>]*>.*?</td>){4}<td data-v="([\d.]+)"', dom)]
    assert len(shares) == len(load_table(train)) and shares == sorted(shares, reverse=True) and shares[0] > shares[-1]


@pytest.mark.slow
def test_report_on_a_scored_dataset_previews_the_masks_own_rule(scored_sample, tmp_path):
    page, train = tmp_path / "scored.html", tmp_path / "train"
    run_cli("report", scored_sample, "-o", page, "--threshold", "1.2")
    text = page.read_text()
    assert "preview of ftprep mask --threshold 1.2" in text and "threshold 1.2</text>" in text
    payload = row_payload(text)
    kinds = np.array(list("".join(row["k"] for row in payload["rows"])))
    ids = np.array([payload["pieces"][piece] for row in payload["rows"] for piece in row["t"]])
    assert ((ids == "<|im_end|>") & (kinds == "m")).sum() == 0 and ((ids == "<|im_end|>") & (kinds == "k")).sum() > 0
    # The same tokens ftprep mask masks at that threshold.
    run_cli("mask", scored_sample, "-o", train, "--threshold", "1.2")
    assert (kinds == "m").sum() == json.loads((train / "stats.json").read_text())["masked_tokens"]

    result = run_cli("report", tmp_path, "-o", page, check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: ")


def test_masked_token_counts_per_token():
    from ftprep.views.report import ReportData, masked_token_counts

    ids = np.array([5, 6, 5, 7, 5, 6])
    assistant = np.array([True, True, True, True, True, False])
    masked = np.array([True, False, True, False, False, False])
    data = ReportData(np.array([0, 6]), ids, assistant, np.ones(6), masked, None, ["a"], "rule")
    counts = {row["token"]: row for row in masked_token_counts(data).to_dicts()}
    assert counts[5] == {"token": 5, "seen": 3, "masked": 2, "share": 2 / 3}
    assert counts[6]["seen"] == 1 and counts[6]["masked"] == 0 and 7 in counts


def test_axis_ticks_are_round_numbers():
    from ftprep.views.report import nice_ticks

    assert nice_ticks(13) == [0, 5, 10, 15]
    assert nice_ticks(20000) == [0, 5000, 10000, 15000, 20000]
    assert nice_ticks(0.8) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert nice_ticks(0) == [0.0, 1.0]


def test_axis_tick_labels_are_distinct_and_counts_tick_whole_numbers():
    from ftprep.views.report import nice_ticks, svg_bars, tick_labels

    # A masked-share histogram of two rows once read "0, 0, 1, 2, 2".
    assert tick_labels(nice_ticks(2, integer=True)) == ["0", "1", "2"]
    for top in (1, 2, 3, 7, 13, 20000):
        labels = tick_labels(nice_ticks(top, integer=True))
        assert len(set(labels)) == len(labels) and all("." not in label for label in labels)
    assert tick_labels(nice_ticks(0.3)) == ["0.0", "0.1", "0.2", "0.3"]
    assert tick_labels(nice_ticks(0.12)) == ["0.00", "0.05", "0.10", "0.15"]
    svg = svg_bars([0, 2, 1], ["0%", "10%", "20%"], "title", "x", "rows")
    assert re.findall(r'text-anchor="end">([^<]+)</text>', svg) == ["0", "1", "2"]


@pytest.mark.slow
def test_report_lists_the_settings_and_the_rejects_by_reason(tmp_path, tiny_model_dir):
    from conftest import DATA

    scored, page = tmp_path / "scored", tmp_path / "report.html"
    run_cli("score", DATA / "bad_rows.jsonl", "-o", scored, "--model", tiny_model_dir)
    run_cli("report", scored, "-o", page)
    text = page.read_text()
    reasons = json.loads((scored / "stats.json").read_text())["reject_reasons"]
    assert sum(reasons.values()) == 7
    for reason, count in reasons.items():
        assert f"{count:,} × {html.escape(reason)}" in text
    assert "score settings</th>" in text and "model=" in text and "12 in, 5 out, 7 rejected" in text
