"""The `ftprep` command line: commands that read like a sentence.

    ftprep score data.jsonl -o scored
    ftprep mask scored -o train --strategy threshold --threshold 2.5
    ftprep inspect train --row 3
    ftprep push train user/my-sft-data --private
    ftprep iv data.jsonl -o iv.safetensors

Each command lives in its own module under ftprep.commands, which declares its settings once.
A command's module is imported when that command runs or shows its help, not before: `ftprep
--help` lists them from ftprep.commands.COMMANDS alone.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping

import click

from ftprep.commands import COMMANDS, SUMMARIES
from ftprep.stages.errors import FtprepError


class LazyCommands(Mapping):
    """The commands by name, in workflow order; each module imported when its command is looked up."""

    def __init__(self, table=COMMANDS):
        self.modules = {name: module for name, module, _ in table}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self.modules:
            raise KeyError(name)
        return importlib.import_module(f"ftprep.commands.{self.modules[name]}").cli

    def __iter__(self):
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)


class WorkflowGroup(click.Group):
    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx, formatter) -> None:
        """The command list of --help, from the summaries alone (click's own would import every command)."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        with formatter.section("Commands"):
            # A bare Command shortens the summary as the real one would.
            formatter.write_dl([(name, click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit)) for name in names])


@click.group(cls=WorkflowGroup, commands=LazyCommands(), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ftprep")
def cli():
    """Rewrite SFT datasets so fine-tuning forgets less."""


def main(args: list[str] | None = None):
    """The console script: one line for every error a user can fix, click's exit codes."""
    try:
        cli.main(args=args, prog_name="ftprep", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # click turns Ctrl-C into Abort; every finished shard is committed, so a rerun resumes.
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as error:
        click.echo(error.ctx.get_help())
        sys.exit(2)  # click's convention: a command line without a command is a usage error
    except click.UsageError as error:
        command = f" {error.ctx.command_path.split(' ', 1)[1]}" if error.ctx and " " in error.ctx.command_path else ""
        click.echo(f"error: {error.format_message()} (see ftprep{command} --help)", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        click.echo(f"error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except FtprepError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    except OSError as error:  # a full disk, a folder that cannot be written: the path and the cause
        click.echo(f"error: {io_error_line(error)}", err=True)
        sys.exit(1)


INTERRUPTED = "interrupted; rerun the same command to resume"


def io_error_line(error: OSError) -> str:
    """One line for an I/O error: what failed, where, and what to do."""
    import errno

    where = error.filename or "a file"
    cause = error.strerror or str(error) or type(error).__name__
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device writing {where}: free some space and rerun the same command to resume"
    return f"{where}: {cause}"


if __name__ == "__main__":
    main()
