"""One module per command. Each declares its settings once (a Settings dataclass) and says what
it does with them; `command()` makes the click command from that declaration.

COMMANDS lists them in the order a user runs them, with the line `ftprep --help` shows for each:
the command line imports a command's module only when that command runs (or its help is asked
for), so that start-up does not import them all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ftprep.settings import Settings, setting

if TYPE_CHECKING:
    from ftprep.results import RunDataset

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

# A shard command resumes an unfinished run of the same settings; the others write one file.
RESUMING_OVERWRITE_HELP = "Replace an existing output instead of resuming it."
OVERWRITE_HELP = "Replace an existing output at -o (without it, one is refused)."
# The engine options about model workers: a command without a model (mask) runs only Ray
# tasks, so they would do nothing there and are not offered.
MODEL_WORKER_OPTIONS = ("num_workers", "gpus_per_worker")


@dataclass(frozen=True, kw_only=True)
class OverwriteOption(Settings):
    overwrite: bool = setting(False, identity=False, help=OVERWRITE_HELP)


@dataclass(frozen=True, kw_only=True)
class ResumingOverwriteOption(Settings):
    overwrite: bool = setting(False, identity=False, help=RESUMING_OVERWRITE_HELP)


@dataclass(frozen=True, kw_only=True)
class SummaryOption(Settings):
    json: bool = setting(False, cli_only=True, help="Print one JSON object on stdout when done: the output, its counts, "
                                                    "rejects by reason and the figures of stats.json (other lines go to stderr).")


def shard_writes(what: str) -> str:
    """What a shard command writes, for the end of its --help."""
    return (f"Writes OUT (-o), a folder that datasets.load_from_disk(OUT) opens: {what} as Arrow shards with state.json and "
            "dataset_info.json, and beside them ftprep.json (the settings, model and counts), stats.json and rejects.jsonl "
            "(each rejected row, with why). A rerun with the same settings resumes it.")


class SettingsCommand(click.Command):
    """A click command whose options are the fields of its Settings class, which `settings_of()`
    gives when the options are needed: mask's grow with every strategy registered.

    Beside them come the options every command has (--config, -q, -v) and those it asks for:
    --overwrite, the engine's, --json (a shard command's summary). `python(settings, **rest)`,
    where given, is what the Python function of the command (ftprep.api) calls: it returns what
    the command made instead of printing it. `writes` ends the --help: the files it writes."""

    def __init__(self, name: str, settings_of, action, extra_params=(), engine: bool = False, overwrite: bool | str = False,
                 model_workers: bool = True, python=None, writes: str = "", summary: bool = False,
                 temporary_output: bool = False):
        self.settings_of, self.extra_params = settings_of, list(extra_params)
        self.engine, self.overwrite, self.model_workers, self.summary = engine, overwrite, model_workers, summary
        self.python, self.temporary_output = python, temporary_output
        self._built: tuple | None = None
        super().__init__(name, callback=partial(self.run_action, action), help=SUMMARIES[name], epilog=writes or None)

    @property
    def params(self) -> list[click.Parameter]:
        settings_class = self.settings_of()
        if self._built is None or self._built[0] is not settings_class:
            self._built = (settings_class, self._make_params())
        return self._built[1]

    @params.setter
    def params(self, value) -> None:  # click.Command sets it; the options come from the settings
        pass

    def option_groups(self) -> list[tuple[str, type, tuple[str, ...]]]:
        """(role, Settings class, the names of its fields this command offers), in --help's order:
        the command's settings, the engine's, --overwrite, --json, -q and -v."""
        from ftprep.engines import EngineOptions
        from ftprep.verbosity import VerbosityOptions

        groups = [("settings", self.settings_of())]
        if self.engine:
            groups.append(("engine", EngineOptions))
        if self.overwrite:
            groups.append(("overwrite", ResumingOverwriteOption if self.overwrite == "resumes" else OverwriteOption))
        if self.summary:
            groups.append(("json", SummaryOption))
        groups.append(("verbosity", VerbosityOptions))
        return [(role, cls, self._offered(role, cls)) for role, cls in groups]

    def _offered(self, role: str, settings_class) -> tuple[str, ...]:
        names = tuple(item.name for item in dataclasses.fields(settings_class))
        if role == "engine" and not self.model_workers:
            return tuple(name for name in names if name not in MODEL_WORKER_OPTIONS)
        return names

    def _make_params(self) -> list[click.Parameter]:
        from ftprep.config_file import config_option
        from ftprep.settings import click_params

        params = []
        for _, settings_class, offered in self.option_groups():
            params += [param for param in click_params(settings_class) if param.name in offered]
        return params + self.extra_params + [config_option()]

    def split_values(self, values: dict) -> tuple[dict, dict]:
        """The values of the groups' fields as {role: its Settings}, and the rest (extra params)."""
        groups, used = {}, set()
        for role, settings_class, offered in self.option_groups():
            groups[role] = settings_class(**{name: values[name] for name in offered if name in values})
            used.update(offered)
        return groups, {key: value for key, value in values.items() if key not in used}

    def run_action(self, action, **values):
        from ftprep.stages.errors import FtprepError
        from ftprep.verbosity import detail, using

        groups, rest = self.split_values(values)
        settings = groups["settings"]
        settings.check_given(given_options(field.name for field in dataclasses.fields(settings)))
        with using(groups["verbosity"].level()):
            try:
                return action(settings, **action_arguments(groups), **rest)
            except FtprepError as error:
                for line in cause_lines(error):  # -v: what lies under the one line (printed after these)
                    detail(line)
                raise


def cause_lines(error: BaseException) -> list[str]:
    """"caused by: OSError: ..." for each exception an error was raised from, innermost last."""
    lines, seen = [], error.__cause__ or error.__context__
    while seen is not None and len(lines) < 5:
        lines.append(f"caused by: {type(seen).__name__}: {str(seen).strip().splitlines()[0] if str(seen).strip() else ''}")
        seen = seen.__cause__ or seen.__context__
    return lines


def given_options(names) -> set[str]:
    """The options of the running command that the user gave (on the command line, in the
    environment or a default map), not left at their defaults."""
    from click.core import ParameterSource

    context = click.get_current_context()
    return {name for name in names if context.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)}


def action_arguments(groups: dict) -> dict:
    """What an action takes beside its settings: engine= (EngineOptions), overwrite=, json=."""
    arguments = {}
    if "engine" in groups:
        arguments["engine"] = groups["engine"]
    if "overwrite" in groups:
        arguments["overwrite"] = groups["overwrite"].overwrite
    if "json" in groups:
        arguments["json"] = groups["json"].json
    return arguments


def command(name: str, settings_class, action, extra_params=(), engine: bool = False, overwrite: bool | str = False,
            model_workers: bool = True, python=None, writes: str = "", summary: bool = False,
            temporary_output: bool = False) -> click.Command:
    """A click command whose options are `settings_class`'s fields (a class, or a function that
    returns the current one) and, with `engine`, the engine's, with `overwrite`, --overwrite (its
    help speaks of resuming where `overwrite` is "resumes"), with `summary`, --json; it calls
    `action(settings, **rest)`. `python` and `writes`: see SettingsCommand."""
    settings_of = settings_class if not isinstance(settings_class, type) else (lambda: settings_class)
    return SettingsCommand(name, settings_of, action, extra_params, engine, overwrite, model_workers, python=python,
                           writes=writes, summary=summary, temporary_output=temporary_output)


def shard_command(name: str, settings_class, command_class, model: bool = True, extra_params=(), writes: str = "",
                  after=None, dry_run=None) -> click.Command:
    """A command that runs shard by shard (score, regen, mask): engine options, --overwrite and
    --json come with it, and it ends with one line on what it wrote (or, with --json, one object);
    `after(settings)`: the lines that follow it (warnings on what was written), on stderr with --json;
    `dry_run(settings)`: what --dry-run prints instead of running (writing nothing)."""

    def action(settings, engine, overwrite, json, dry_run_asked=False):
        import json as json_module

        from ftprep.runner import run
        from ftprep.summary import read_stats, run_summary
        from ftprep.verbosity import say

        if dry_run_asked:
            dry_run(settings)
            return
        # With --json, stdout holds the one object: every other line goes to stderr.
        manifest = run(partial(command_class, settings), engine=engine, overwrite=overwrite, echo=partial(say, err=json))
        if json:
            click.echo(json_module.dumps(run_summary(settings.output, read_stats(Path(settings.output)))))
        else:
            say(written_summary(settings.output, manifest))
        for line in after(settings) if after else ():
            say(line, err=json)

    def python(settings, engine, overwrite) -> RunDataset:
        """The dataset it wrote: a datasets.Dataset (ftprep.RunDataset) that also carries .output, .stats, .rejects,
        .rejected and .reject_reasons; rows rejected are also named in a RowsRejectedWarning."""
        from ftprep.results import open_result
        from ftprep.runner import run
        from ftprep.verbosity import say

        run(partial(command_class, settings), engine=engine, overwrite=overwrite, echo=partial(say, err=True))
        return open_result(settings.output)

    if dry_run is not None:
        extra_params = (*extra_params, click.Option(["--dry-run", "dry_run_asked"], is_flag=True, help="Print the stats this "
                        "run would have (as ftprep stats shows them) and write nothing: no folder, no lock."))
    return command(name, settings_class, action, extra_params, engine=True, overwrite="resumes", model_workers=model, python=python,
                   writes=writes, summary=True, temporary_output=True)


def written_summary(output: str, manifest) -> str:
    counts = manifest.counts
    where = f" (see {Path(output) / 'rejects.jsonl'})" if counts.rows_rejected else ""  # only where there is something to see
    return f"{output}: {counts.rows_out} rows written, {counts.rows_rejected} rejected{where}"
