"""The `ftprep` command line: commands that read like a sentence.

    ftprep score data.jsonl -o scored
    ftprep mask scored -o train --strategy threshold --threshold 2.5
    ftprep inspect train --row 3
    ftprep push train user/my-sft-data --private
    ftprep iv data.jsonl -o iv.safetensors

Each command lives in its own module under ftprep.commands, which declares its settings once.
"""

from __future__ import annotations

import sys

import click

from ftprep.commands import export, export_config, hft_plan, inspect_row, iv, mask, push, regen, report, score, stats
from ftprep.stages.errors import FtprepError

# In the order a user runs them.
COMMANDS = (score.cli, regen.cli, mask.cli, inspect_row.cli, stats.cli, report.cli, export_config.cli, export.cli, push.cli,
            hft_plan.cli, iv.cli)


class WorkflowGroup(click.Group):
    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)


@click.group(cls=WorkflowGroup, commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
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
