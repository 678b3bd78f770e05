"""`ftprep hft-plan`: half fine-tuning, which half of each layer's projections trains."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import click

from ftprep.commands import command
from ftprep.commands import common as shared
from ftprep.settings import Settings, setting


@dataclass(frozen=True, kw_only=True)
class HFTPlanSettings(Settings):
    output: str = shared.output("JSON file for the plan.")
    model: str = shared.model("Alias, model folder or hub id; only its config is read.")
    ratio: float = setting(0.5, low=0, high=1, low_open=True, high_open=True,
                           help="Share of each layer's attention and feed-forward projections that trains.")
    seed: int = shared.seed("Seed of the random choice of projections.")
    train_embeddings: bool = setting(False, help="Also train the token embeddings (and an untied lm_head).")
    train_norms: bool = setting(False, help="Also train the norm weights.")
    axolotl_yaml: str | None = setting(None, help="Also write the plan as Axolotl `unfrozen_parameters` to this file.")


def write_plan(settings: HFTPlanSettings, overwrite: bool) -> None:
    from ftprep.plans.hft_plan import HFTPlanRun, plan_summary, read_hft_plan
    from ftprep.runner import run_files

    run_files(partial(HFTPlanRun, settings), overwrite=overwrite, echo=click.echo)
    click.echo(plan_summary(settings.output, read_hft_plan(Path(settings.output))))
    if settings.axolotl_yaml:
        click.echo(f"wrote {settings.axolotl_yaml}")


cli = command("hft-plan", HFTPlanSettings, write_plan, overwrite=True)
