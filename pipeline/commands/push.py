"""`ftprep push`: an output folder to the Hub as Parquet files and a dataset card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from ftprep.commands import command
from ftprep.commands import common as shared
from ftprep.settings import Settings, positive, setting


@dataclass(frozen=True, kw_only=True)
class PushSettings(Settings):
    folder: str = shared.folder()
    repo_id: str = setting(argument=True, help="The dataset repo, user/name.")
    private: bool = setting(False, help="Create the repo private (an existing repo keeps its visibility).")
    revision: str | None = setting(None, help="Branch to push to, created when missing (default: main).")
    create_pr: bool = setting(False, help="Open a pull request with the changes instead of committing to the branch.")
    config_name: str = shared.config_name("a repo")
    license: str | None = shared.license("the repo card's")
    files_per_commit: int = positive(50, help="Parquet files per commit; a rerun after an interruption skips committed files.")


def push(settings: PushSettings) -> None:
    from ftprep.publish.push import push_folder

    click.echo(push_folder(Path(settings.folder), settings.repo_id, private=settings.private, revision=settings.revision,
                           create_pr=settings.create_pr, config_name=settings.config_name, license=settings.license,
                           files_per_commit=settings.files_per_commit, echo=click.echo))


cli = command("push", PushSettings, push)
