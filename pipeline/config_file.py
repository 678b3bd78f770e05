"""`--config FILE`, on every command: options from a YAML or JSON file, as `trl sft --config` and
Axolotl read theirs.

    # mask.yaml
    strategy: soft
    sigma: 0.5
    min-kept: 4        # keys are the option names, with - or _

Options given on the command line override the file's. A key that names no option of the
command is refused with the ones it has. The values become the command's defaults (click's
default_map), so they go through the same types, choices and ranges as typed ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ftprep.settings import close_names

CONFIG_HELP = ("YAML or JSON file of options: keys are the option names (with - or _), e.g. `top-k: 20`; options on "
               "the command line override it.")


def config_option() -> click.Option:
    return click.Option(["--config"], metavar="FILE", is_eager=True, expose_value=False, callback=apply_config,
                        help=CONFIG_HELP)


def apply_config(ctx: click.Context, param, value) -> None:
    if value is None or ctx.resilient_parsing:
        return
    options = read_config(Path(value))
    ctx.default_map = {**(ctx.default_map or {}), **command_defaults(ctx.command, options, value)}


def read_config(path: Path) -> dict:
    """The file's mapping of option names to values; BadParameter (one line) where it has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise click.BadParameter(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise click.BadParameter(f"cannot read {path}: {error}") from None
    data = parse_config(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} holds a {type(data).__name__}, not a mapping of option names to values")
    return data


def parse_config(text: str, path: Path):
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as error:
            raise click.BadParameter(f"{path} is not valid JSON: {error}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise click.BadParameter(f"{path} is not valid YAML{at}: {getattr(error, 'problem', None) or error}") from None


def option_keys(command: click.Command) -> dict[str, str]:
    """Each name a config key may use for an option (its name, its long flags), as the option's name."""
    keys = {}
    for param in command.params:
        if param.name is None or param.name in ("config", "help") or not param.expose_value:
            continue
        keys[param.name] = param.name
        for flag in param.opts:
            if flag.startswith("--"):
                keys[flag[2:].replace("-", "_")] = param.name
    return keys


def command_defaults(command: click.Command, options: dict, path: str) -> dict:
    """The file's options as the command's parameter names; unknown keys refused, with the known ones."""
    keys = option_keys(command)
    defaults, unknown = {}, []
    for key, value in options.items():
        name = keys.get(str(key).replace("-", "_"))
        if name is None:
            unknown.append(str(key))
        else:
            defaults[name] = value
    if unknown:
        known = sorted({name.replace("_", "-") for name in keys.values()})
        hyphenated = [key.replace("_", "-") for key in unknown]
        raise click.BadParameter(f"{path}: ftprep {command.name} has no option {', '.join(unknown)}"
                                 f"{close_names(hyphenated, known)}; its options: {', '.join(known)}")
    return defaults
