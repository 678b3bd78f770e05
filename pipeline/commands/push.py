"""`ftprep push`: an output folder to the Hub as Parquet files and a dataset card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from ftprep.commands import command
from ftprep.settings import Settings, positive, setting


@dataclass(frozen=True, kw_only=True)
class PushSettings(Settings):
    folder: str = setting(argument=True, help="A folder written by ftprep score or mask.")
    repo_id: str = setting(argument=True, help="The dataset repo, user/name.")
    private: bool = setting(False, help="Create the repo private (an existing repo keeps its visibility).")
    revision: str | None = setting(None, help="Branch to push to, created when missing (default: main).")
    create_pr: bool = setting(False, help="Open a pull request with the changes instead of committing to the branch.")
    config_name: str = setting("default", help="Config (subset) the files become; several configs can share a repo.")
    license: str | None = setting(None, help="License in the card's metadata (default: the repo card's, else other).")
    files_per_commit: int = positive(50, help="Parquet files per commit; a rerun after an interruption skips committed files.")


def push(settings: PushSettings) -> None:
    from ftprep.publish.push import push_folder

    click.echo(push_folder(Path(settings.folder), settings.repo_id, private=settings.private, revision=settings.revision,
                           create_pr=settings.create_pr, config_name=settings.config_name, license=settings.license,
                           files_per_commit=settings.files_per_commit, echo=click.echo))


cli = command("push", PushSettings, push)
