"""One module per command. Each declares its settings once (a Settings dataclass) and says what
it does with them; `command()` makes the click command from that declaration."""

from __future__ import annotations

import dataclasses
from functools import partial

import click

from ftprep.settings import click_params

# The engine options about model workers: a command without a model (mask) runs only Ray
# tasks, so they would do nothing there and are not offered.
MODEL_WORKER_OPTIONS = ("num_workers", "gpus_per_worker")


def command(name: str, settings_class, action, help: str, extra_params=(), engine: bool = False,
            overwrite: bool = False, model_workers: bool = True) -> click.Command:
    """A click command whose options are `settings_class`'s fields (and, with `engine`, the
    engine's, with `overwrite`, --overwrite); it calls `action(settings, **rest)`."""
    from ftprep.engines import EngineOptions

    params = click_params(settings_class) + list(extra_params)
    if engine:
        params += [param for param in click_params(EngineOptions)
                   if model_workers or param.name not in MODEL_WORKER_OPTIONS]
    if overwrite:
        params.append(click.Option(["--overwrite"], is_flag=True, help="Replace an existing output instead of resuming it."))
    setting_names = {item.name for item in dataclasses.fields(settings_class)}
    engine_names = {item.name for item in dataclasses.fields(EngineOptions)}

    def callback(**values):
        settings = settings_class(**{key: value for key, value in values.items() if key in setting_names})
        rest = {key: value for key, value in values.items() if key not in setting_names | engine_names}
        if engine:
            rest["engine"] = EngineOptions(**{key: value for key, value in values.items() if key in engine_names})
        return action(settings, **rest)

    return click.Command(name, params=params, callback=callback, help=help)


def shard_command(name: str, settings_class, command_class, help: str, model: bool = True) -> click.Command:
    """A command that runs shard by shard (score, regen, mask): engine options and --overwrite
    come with it, and it ends with one line on what it wrote."""

    def action(settings, engine, overwrite):
        from ftprep.runner import run

        manifest = run(partial(command_class, settings), engine=engine, overwrite=overwrite, echo=click.echo)
        click.echo(written_summary(settings.output, manifest))

    return command(name, settings_class, action, help, engine=True, overwrite=True, model_workers=model)


def written_summary(output: str, manifest: dict) -> str:
    counts = manifest["counts"]
    return f"{output}: {counts['rows_out']} rows written, {counts['rows_rejected']} rejected (see rejects.jsonl)"
