"""`ftprep iv`: a dataset's instruction vector, the heads that carry its task (arXiv 2406.12227)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ftprep.commands import command
from ftprep.commands import common as shared
from ftprep.settings import Settings, setting


@dataclass(frozen=True, kw_only=True)
class IVSettings(Settings):
    input: str = shared.input_path()
    output: str = shared.output("The .safetensors file for the vectors; OUT.json beside it gets the heads and scores.")
    model: str = shared.model("Alias, model folder, .gguf file or hub id (the model you will fine-tune).")
    chat_template: str | None = shared.chat_template()
    trust_remote_code: bool = shared.trust_remote_code()
    format: str | None = shared.input_format()
    split: str | None = shared.split()
    limit: int | None = shared.limit()
    prompts: int = setting(16, low=2, help="Rows (drawn with --seed) whose prompts are averaged over and patched into.")
    heads: int = setting(10, low=1, help="Heads kept: those whose patching restores the answer most.")
    answer_tokens: int = setting(4, low=1, help="First answer tokens whose log-probability measures a head's effect.")
    layers: str | None = setting(None, help="Layers to measure, e.g. 0-9,12 (default: all); fewer layers, less time.")
    seed: int = shared.seed("Seed of the rows drawn and of the shuffled instructions.")
    dtype: str = shared.dtype()
    device: str = shared.device()


def extract(settings: IVSettings, overwrite: bool) -> None:
    from ftprep.plans.iv import extract_instruction_vector, iv_summary

    click.echo(iv_summary(settings.output, extract_instruction_vector(settings, overwrite=overwrite, echo=click.echo)))


cli = command("iv", IVSettings, extract, overwrite=True)
