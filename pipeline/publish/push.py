"""`ftprep push`: publish an output folder on the Hugging Face Hub as a Parquet dataset with a card.

1. Stage (publish/staging.py): each Arrow shard of DIR becomes one Parquet file in
   DIR/.ftprep-push/<config>/, laid out as in the repo, with README.md and the histogram image.
2. Compare: list the files already at the target revision and skip those with the same content.
3. Commit: the Parquet files in commits of `files_per_commit`, then the card, the image and the
   removal of this config's stale shards in one last commit, so the card never points at a half
   upload. An interrupted push resumes by running it again: committed files are skipped.

The token comes from HF_TOKEN or the saved login (`hf auth login`); it only travels in request
headers and is never printed or written to a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ftprep.progress import Progress
from ftprep.publish.card import SPLIT, data_dir
from ftprep.publish.staging import StagedFile, check_config_name, checked_source, stage, staging_folder
from ftprep.stages.errors import FtprepError
from ftprep.writers import write_json_atomic

PULL_REQUEST_RECORD = ".pull-request.json"  # the pull request a --create-pr push opened, to continue it
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass
class Destination:
    repo_id: str
    revision: str  # where the next commit goes: a branch, or refs/pr/N of an open pull request
    open_pr: bool  # the next commit opens a pull request against `revision`
    pr_url: str | None = None


@dataclass
class UploadPlan:
    batches: list[list[StagedFile]]  # Parquet files still to commit, one commit per batch
    last: list[str]  # card and image, where they differ from the repo's
    stale: list[str]  # this config's shards from an earlier push that the new card must not point at

    @property
    def empty(self) -> bool:
        return not (self.batches or self.last or self.stale)


# -- comparing with the repo ----------------------------------------------------------------


def file_digest(path: Path, digest) -> str:
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_id(path: Path) -> str:
    """The id git gives a file's content: what the Hub lists for files not stored in LFS."""
    return file_digest(path, hashlib.sha1(f"blob {path.stat().st_size}\0".encode()))


def same_as_remote(local: Path, remote) -> bool:
    """Whether the repo already holds exactly this file (size first; hashed only when sizes match)."""
    if remote is None or remote.size != local.stat().st_size:
        return False
    if remote.lfs is not None:
        return file_digest(local, hashlib.sha256()) == remote.lfs.sha256
    return git_blob_id(local) == remote.blob_id


def plan_upload(staging: Path, data: list[StagedFile], card_files: list[str], remote: dict, config_name: str,
                files_per_commit: int) -> UploadPlan:
    missing = [item for item in data if not same_as_remote(staging / item.path, remote.get(item.path))]
    ours = {item.path for item in data}
    prefix = f"{data_dir(config_name)}/{SPLIT}-"
    return UploadPlan(
        batches=[missing[start : start + files_per_commit] for start in range(0, len(missing), files_per_commit)],
        last=[path for path in card_files if not same_as_remote(staging / path, remote.get(path))],
        stale=sorted(path for path in remote if path.startswith(prefix) and path not in ours),
    )


# -- the Hub --------------------------------------------------------------------------------


def hub_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise FtprepError("no Hugging Face token: run `hf auth login` or set HF_TOKEN to a token with write access")
    return token


def check_reachable(endpoint: str) -> None:

    from ftprep.models import hub_reachable

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise FtprepError("HF_HUB_OFFLINE is set: unset it to push to the Hub")
    if not hub_reachable():
        raise FtprepError(f"cannot reach {endpoint}: check the network (or HF_ENDPOINT), then rerun to push")


def _is_network_error(error: Exception) -> bool:
    # huggingface_hub 1.x raises httpx's transport errors and 2.x httpx2's: both name them alike.
    return isinstance(error, (ConnectionError, TimeoutError)) or any(
        cls.__name__ in ("TransportError", "TimeoutException") for cls in type(error).__mro__)


def describe_http_error(error, repo_id: str) -> str:
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    status = error.response.status_code if getattr(error, "response", None) is not None else None
    if isinstance(error, RevisionNotFoundError):
        return f"{repo_id} has no such revision ({status}): check --revision"
    if isinstance(error, RepositoryNotFoundError):
        return f"dataset repo {repo_id} not found or not visible to your token ({status}): check the name and the token (hf auth login)"
    if status == 401:
        return "the Hub refused the token (401 Unauthorized): run `hf auth login` again or set HF_TOKEN to a valid token"
    if status == 403:
        return f"your token may not write to {repo_id} (403 Forbidden): use a token with write access to that namespace"
    reason = (getattr(error, "server_message", None) or str(error)).strip().splitlines()
    return f"the Hub answered {status}: {reason[0] if reason else type(error).__name__}; rerun the same command to resume"


@contextmanager
def hub_errors(repo_id: str, endpoint: str, token: str):
    """Hub failures as one-line FtprepErrors (with the token blanked out, should a server echo it)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as error:
        raise FtprepError(describe_http_error(error, repo_id).replace(token, "***")) from None
    except Exception as error:
        if not _is_network_error(error):
            raise
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise FtprepError(f"lost the connection to {endpoint} ({reason.replace(token, '***')}); rerun the same command to resume") from None


def remote_files(api, repo_id: str, revision: str) -> dict:
    from huggingface_hub.hf_api import RepoFile

    entries = api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True)
    return {entry.path: entry for entry in entries if isinstance(entry, RepoFile)}


def remote_text(api, repo_id: str, revision: str, path: str) -> str:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = hf_hub_url(repo_id, path, repo_type="dataset", revision=revision, endpoint=api.endpoint)
    response = get_session().get(url, headers=build_hf_headers(token=api.token), follow_redirects=True)
    hf_raise_for_status(response)
    return response.text


def saved_pull_request(staging: Path, repo_id: str, base: str) -> dict | None:
    path = staging / PULL_REQUEST_RECORD
    record = json.loads(path.read_text()) if path.is_file() else None
    return record if record and record.get("repo_id") == repo_id and record.get("base") == base else None


def open_destination(api, repo_id: str, private: bool, revision: str | None, create_pr: bool, staging: Path, echo) -> Destination:
    """Create the repo (and branch) when missing; a --create-pr push continues the pull request it opened before."""
    api.create_repo(repo_id, repo_type="dataset", private=True if private else None, exist_ok=True)
    # create_repo leaves an existing repo as it is: data meant to be private must not land in a public one.
    if private and not api.repo_info(repo_id, repo_type="dataset").private:
        raise FtprepError(f"{repo_id} exists and is public: make it private on the Hub first, or push without --private")
    base = revision or "main"
    if revision and revision != "main" and not revision.startswith("refs/"):
        api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
    saved = saved_pull_request(staging, repo_id, base) if create_pr else None
    if saved:
        echo(f"continuing pull request {saved['url']} (delete {staging / PULL_REQUEST_RECORD} to open a new one)")
        return Destination(repo_id, saved["revision"], open_pr=False, pr_url=saved["url"])
    return Destination(repo_id, base, open_pr=create_pr)


def commit(api, destination: Destination, operations: list, message: str, staging: Path):
    base = destination.revision
    info = api.create_commit(destination.repo_id, operations, commit_message=message, repo_type="dataset",
                             revision=destination.revision, create_pr=destination.open_pr)
    if destination.open_pr:
        # The rest of this push, and a rerun after an interruption, go into the pull request just opened.
        destination.revision, destination.pr_url, destination.open_pr = info.pr_revision, info.pr_url, False
        write_json_atomic(staging / PULL_REQUEST_RECORD, {"repo_id": destination.repo_id, "base": base,
                                                          "revision": info.pr_revision, "url": info.pr_url})
    return info


def run_plan(api, destination: Destination, plan: UploadPlan, staging: Path, config_name: str, echo) -> str:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    progress = Progress("push", sum(item.rows for batch in plan.batches for item in batch))
    info = None
    for number, batch in enumerate(plan.batches, 1):
        operations = [CommitOperationAdd(path_in_repo=item.path, path_or_fileobj=str(staging / item.path)) for item in batch]
        info = commit(api, destination, operations, f"ftprep push {config_name}: Parquet files, part {number} of {len(plan.batches)}", staging)
        progress.update(sum(item.rows for item in batch))
    progress.close()
    if plan.last or plan.stale:
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(staging / path)) for path in plan.last]
        operations += [CommitOperationDelete(path_in_repo=path) for path in plan.stale]
        try:
            info = commit(api, destination, operations, f"ftprep push {config_name}: dataset card", staging)
        except ValueError as error:  # the Hub's check of the card's YAML (an existing card may bring bad keys)
            raise FtprepError(f"the Hub refused README.md: {' '.join(str(error).split())}") from None
    if destination.pr_url:
        return f"pull request: {destination.pr_url}"
    return f"pushed to {destination.repo_id} ({destination.revision}): {info.commit_url}"


def push_folder(folder: Path, repo_id: str, *, private: bool = False, revision: str | None = None, create_pr: bool = False,
                config_name: str = "default", license: str | None = None, files_per_commit: int = 50, echo=print) -> str:
    """Push `folder` (from ftprep score or mask) to the dataset repo `repo_id`; returns the line to show last."""
    from huggingface_hub import HfApi, constants

    folder = Path(folder)
    manifest = checked_source(folder)
    # fullmatch: `$` alone would let a trailing newline through.
    if not REPO_ID.fullmatch(repo_id):
        raise FtprepError(f"{repo_id!r} is not a repo id: give it as user/name or org/name")
    check_config_name(config_name)
    token = hub_token()
    check_reachable(constants.ENDPOINT)

    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    with hub_errors(repo_id, constants.ENDPOINT, token):
        # The repo first: a refused token or a wrong name stops the push before any conversion.
        destination = open_destination(api, repo_id, private, revision, create_pr, staging_folder(folder, config_name), echo)
        remote = remote_files(api, repo_id, destination.revision)
        existing_card = remote_text(api, repo_id, destination.revision, "README.md") if "README.md" in remote else None
        staging, staged, card_files = stage(folder, manifest, config_name, repo_id, license, existing_card)
        echo(f"staged {len(staged)} Parquet files ({sum(item.rows for item in staged)} rows) in {staging}")
        plan = plan_upload(staging, staged, card_files, remote, config_name, files_per_commit)
        if plan.empty:
            return f"{repo_id} ({destination.revision}) already holds these files: nothing to push"
        skipped = len(staged) - sum(len(batch) for batch in plan.batches)
        if skipped:
            echo(f"{skipped} of {len(staged)} Parquet files are already in {repo_id} ({destination.revision}): skipped")
        return run_plan(api, destination, plan, staging, config_name, echo)
