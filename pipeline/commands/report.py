"""`ftprep report`: one self-contained HTML page with plots and examples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftprep.commands import command
from ftprep.commands import common as shared
from ftprep.settings import Settings
from ftprep.stages.errors import FtprepError


@dataclass(frozen=True, kw_only=True)
class ReportSettings(Settings):
    folder: str = shared.folder()
    output: str = shared.output("HTML file to write.", default="report.html")
    threshold: float = shared.preview_threshold("Scored datasets: preview ftprep mask --threshold at this perplexity (the masked "
                                                                  "tokens and the line on the perplexity plot).")


def write_report(settings: ReportSettings, overwrite: bool = False) -> None:
    from ftprep.verbosity import say

    say(f"wrote {make_report(settings, overwrite)}")


def make_report(settings: ReportSettings, overwrite: bool = False) -> Path:
    """The HTML file it wrote."""
    from ftprep.runner import check_output_apart
    from ftprep.views.report import render_report
    from ftprep.writers import write_text_atomic

    output = Path(settings.output)
    if output.is_dir():
        raise FtprepError(f"-o {settings.output} is a folder: give the HTML file to write, e.g. {output / 'report.html'}")
    if not output.parent.is_dir():
        raise FtprepError(f"-o {settings.output}: the folder {output.parent} does not exist")
    check_output_apart(settings.output, [settings.folder])
    if output.exists() and not overwrite:  # as every other command: an existing output is never replaced unasked
        raise FtprepError(f"{settings.output} exists: pass --overwrite to replace it, or choose another -o")
    write_text_atomic(output, render_report(Path(settings.folder), settings.threshold))
    return output


cli = command("report", ReportSettings, write_report, python=make_report, overwrite=True,
              writes="Writes the HTML file -o (default: report.html): one self-contained page, images and data inside.")
