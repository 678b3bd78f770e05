"""One module per command. Each declares its settings once (a Settings dataclass) and says what
it does with them; `command()` makes the click command from that declaration.

COMMANDS lists them in the order a user runs them, with the line `ftprep --help` shows for each:
the command line imports a command's module only when that command runs (or its help is asked
for), so that start-up does not import them all.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click

# (name, module under ftprep.commands, summary), in the order a user runs them.
COMMANDS = (
    ("score", "score", "Score every ground-truth token of INPUT under the model: logprob, rank, entropy."),
    ("regen", "regen", "Rewrite the assistant turns of INPUT with the model itself; keep the best checked rewrite, else the "
                       "ground truth."),
    ("mask", "mask", "Turn SCORED into a training dataset: input_ids, attention_mask, labels (and loss_weights)."),
    ("inspect", "inspect_row", "Show one row's tokens, with masked or low-weight tokens marked, and its numbers."),
    ("stats", "stats", "Print the stats of a scored or training dataset."),
    ("report", "report", "Write one self-contained HTML page for FOLDER: plots, most masked tokens, settings, a table of rows."),
    ("export-config", "export_config", "Print a ready-to-use training snippet for FOLDER (TRL Python, Axolotl or LLaMA-Factory YAML)."),
    ("export", "export", "Write FOLDER as Parquet files and a dataset card to a local folder, as push uploads them "
                         "(no token): datasets.load_dataset(DIR) and trl sft read it."),
    ("push", "push", "Upload FOLDER to the Hub as dataset REPO_ID: Parquet files and a dataset card."),
    ("hft-plan", "hft_plan", "Half fine-tuning (HFT): choose per layer which half of the projections trains; the rest stays frozen."),
    ("iv", "iv", "Extract INPUT's instruction vector: the heads that carry its task, summed per layer (arXiv 2406.12227)."),
)
SUMMARIES = {name: summary for name, _, summary in COMMANDS}

OVERWRITE_HELP = "Replace an existing output instead of resuming it."
# The engine options about model workers: a command without a model (mask) runs only Ray
# tasks, so they would do nothing there and are not offered.
MODEL_WORKER_OPTIONS = ("num_workers", "gpus_per_worker")


class SettingsCommand(click.Command):
    """A click command whose options are the fields of its Settings class, which `settings_of()`
    gives when the options are needed: mask's grow with every strategy registered."""

    def __init__(self, name: str, settings_of, action, extra_params=(), engine: bool = False, overwrite: bool | str = False,
                 model_workers: bool = True):
        self.settings_of, self.extra_params = settings_of, list(extra_params)
        self.engine, self.overwrite, self.model_workers = engine, overwrite, model_workers
        self._built: tuple | None = None
        super().__init__(name, callback=partial(self.run_action, action), help=SUMMARIES[name])

    @property
    def params(self) -> list[click.Parameter]:
        settings_class = self.settings_of()
        if self._built is None or self._built[0] is not settings_class:
            self._built = (settings_class, self._make_params(settings_class))
        return self._built[1]

    @params.setter
    def params(self, value) -> None:  # click.Command sets it; the options come from the settings
        pass

    def _make_params(self, settings_class) -> list[click.Parameter]:
        from ftprep.engines import EngineOptions
        from ftprep.settings import click_params

        params = click_params(settings_class)
        if self.engine:
            params += [param for param in click_params(EngineOptions)
                       if self.model_workers or param.name not in MODEL_WORKER_OPTIONS]
        if self.overwrite:
            help_text = self.overwrite if isinstance(self.overwrite, str) else OVERWRITE_HELP
            params.append(click.Option(["--overwrite"], is_flag=True, help=help_text))
        return params + self.extra_params

    def run_action(self, action, **values):
        import dataclasses

        from ftprep.engines import EngineOptions

        settings_class = self.settings_of()
        setting_names = {item.name for item in dataclasses.fields(settings_class)}
        engine_names = {item.name for item in dataclasses.fields(EngineOptions)}
        settings = settings_class(**{key: value for key, value in values.items() if key in setting_names})
        settings.check_given(given_options(setting_names))
        rest = {key: value for key, value in values.items() if key not in setting_names | engine_names}
        if self.engine:
            rest["engine"] = EngineOptions(**{key: value for key, value in values.items() if key in engine_names})
        return action(settings, **rest)


def given_options(names) -> set[str]:
    """The options of the running command that the user gave (on the command line, in the
    environment or a default map), not left at their defaults."""
    from click.core import ParameterSource

    context = click.get_current_context()
    return {name for name in names if context.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)}


def command(name: str, settings_class, action, extra_params=(), engine: bool = False, overwrite: bool | str = False,
            model_workers: bool = True) -> click.Command:
    """A click command whose options are `settings_class`'s fields (a class, or a function that
    returns the current one) and, with `engine`, the engine's, with `overwrite`, --overwrite; it
    calls `action(settings, **rest)`. `overwrite` may be the option's help, where it does other than resume."""
    settings_of = settings_class if not isinstance(settings_class, type) else (lambda: settings_class)
    return SettingsCommand(name, settings_of, action, extra_params, engine, overwrite, model_workers)


def shard_command(name: str, settings_class, command_class, model: bool = True, extra_params=()) -> click.Command:
    """A command that runs shard by shard (score, regen, mask): engine options and --overwrite
    come with it, and it ends with one line on what it wrote."""

    def action(settings, engine, overwrite):
        from ftprep.runner import run

        manifest = run(partial(command_class, settings), engine=engine, overwrite=overwrite, echo=click.echo)
        click.echo(written_summary(settings.output, manifest))

    return command(name, settings_class, action, extra_params, engine=True, overwrite=True, model_workers=model)


def written_summary(output: str, manifest) -> str:
    counts = manifest.counts
    where = f" (see {Path(output) / 'rejects.jsonl'})" if counts.rows_rejected else ""  # only where there is something to see
    return f"{output}: {counts.rows_out} rows written, {counts.rows_rejected} rejected{where}"
