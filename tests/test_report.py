"""`ftprep report`: a self-contained page whose plots a real browser shows."""

import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import run_cli

CHROMIUM = shutil.which("chromium")
# The flags a closed network needs (no background calls) and root needs (no sandbox).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
COLORS = {"perplexity bars": (0x4C, 0x78, 0xA8), "masked-share bars": (0xF5, 0x85, 0x18),
          "weight bars": (0x54, 0xA2, 0x4B), "threshold line": (0xD6, 0x27, 0x28)}


def screenshot(page, png, profile):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: scripts/setup-venv.sh installs Debian's chromium")
        pytest.skip("chromium is not installed")
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1100,2400",
                    f"--screenshot={png}", page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    from PIL import Image

    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def pixels_of(image, color):
    return int((np.abs(image - np.array(color)).sum(axis=-1) < 12).sum())


@pytest.mark.parametrize("strategy", ["threshold", "soft"])
def test_report_page_shows_its_plots(scored_sample, tmp_path, strategy):
    train, page = tmp_path / "train", tmp_path / "report.html"
    run_cli("mask", scored_sample, "-o", train, "--strategy", strategy)
    assert "wrote" in run_cli("report", train, "-o", page).stdout
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained
    assert text.count('<svg class="plot"') == (3 if strategy == "soft" else 2)
    assert text.count('<pre class="row">') == 3 and text.count('class="masked"') > 0
    assert text.count("<tr><td><code>") > 0  # most often masked tokens

    image = screenshot(page, tmp_path / "report.png", tmp_path / "profile")
    seen = {name: pixels_of(image, color) for name, color in COLORS.items()}
    print(strategy, seen)
    assert seen["perplexity bars"] > 2000 and seen["masked-share bars"] > 500 and seen["threshold line"] > 100
    assert (seen["weight bars"] > 2000) == (strategy == "soft")


def test_report_on_a_scored_dataset_uses_the_threshold(scored_sample, tmp_path):
    page = tmp_path / "scored.html"
    run_cli("report", scored_sample, "-o", page, "--threshold", "4")
    assert "(perplexity &gt; 4)" in page.read_text()
    result = run_cli("report", tmp_path, "-o", page, check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: ")


def test_masked_token_counts_per_token():
    from ftprep.report import ReportData, masked_token_counts

    ids = np.array([5, 6, 5, 7, 5, 6])
    assistant = np.array([True, True, True, True, True, False])
    masked = np.array([True, False, True, False, False, False])
    data = ReportData(np.array([0, 6]), ids, assistant, np.ones(6), masked, None, ["a"], "rule")
    counts = {row["token"]: row for row in masked_token_counts(data).to_dicts()}
    assert counts[5] == {"token": 5, "seen": 3, "masked": 2, "share": 2 / 3}
    assert counts[6]["seen"] == 1 and counts[6]["masked"] == 0 and 7 in counts
