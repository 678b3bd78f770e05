"""`ftprep push` against a local server that answers like the Hub and records every request.

The server implements the endpoints huggingface_hub's create_repo, create_branch,
list_repo_tree, create_commit (validate-yaml, preupload, commit) and a README download call,
keeps the repo's files per branch and pull request, and can fail a commit on purpose.
"""

import base64
import hashlib
import io
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DATA, flat, load_table, run_cli, run_cli_process  # push reads HF_ENDPOINT and HF_HOME at import: a process of its own

TOKEN = "hf_fakeSecret" + "7f3a9c1e5b2d4f60"
REPO = "someone/ftprep-demo"
LFS_SUFFIXES = (".parquet", ".png")  # what the Hub's default .gitattributes stores in LFS


class FakeHub:
    """Repos as {ref: {path: bytes}}; every request as a dict in `requests`."""

    def __init__(self):
        self.requests = []
        self.repos = {}
        self.commit_attempts = 0
        self.fail_commit_attempts = set()  # answered 500
        self.drop_commit_attempts = set()  # connection closed without an answer
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def requests_to(self, kind):
        return [request for request in self.requests if request["kind"] == kind]

    def commits(self):
        """Commits the server accepted: header, files and deletions of each."""
        return [request["commit"] for request in self.requests_to("commit") if request["status"] == 200]

    def files(self, ref="main"):
        return self.repos[REPO]["refs"][ref]

    def handle(self, method, raw_path, headers, body):
        url = urlsplit(raw_path)
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        record = {"method": method, "path": url.path, "query": query, "headers": headers, "body": body, "kind": "other"}
        with self.lock:
            self.requests.append(record)
            if headers.get("authorization") != f"Bearer {TOKEN}":
                record["status"] = 401
                return 401, {"X-Error-Message": "Invalid credentials in Authorization header"}, {"error": "Invalid credentials in Authorization header"}
            status, extra, answer = self._route(method, parts, query, body, record)
            record["status"] = status
            return status, extra, answer

    def _route(self, method, parts, query, body, record):
        if method == "POST" and parts == ["api", "repos", "create"]:
            record["kind"] = "create"
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in self.repos:
                return 409, {}, {"error": "You already created this dataset repo", "url": f"{self.url}/datasets/{repo_id}"}
            gitattributes = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
            self.repos[repo_id] = {"payload": payload, "refs": {"main": {".gitattributes": gitattributes}}, "prs": 0}
            return 200, {}, {"url": f"{self.url}/datasets/{repo_id}"}
        if method == "POST" and parts == ["api", "validate-yaml"]:
            record["kind"] = "validate-yaml"
            return 200, {}, {"errors": [], "warnings": []}
        if parts[0] == "datasets" and len(parts) > 5 and parts[3] == "resolve":
            record["kind"] = "resolve"
            repo, ref, path = self.repos.get("/".join(parts[1:3])), parts[4], "/".join(parts[5:])
            content = (repo or {}).get("refs", {}).get(ref, {}).get(path)
            if content is None:
                return 404, {"X-Error-Code": "EntryNotFound"}, {"error": "not found"}
            return 200, {}, content
        if method == "GET" and parts[:2] == ["api", "datasets"] and len(parts) == 4:
            record["kind"] = "repo-info"
            repo = self.repos.get("/".join(parts[2:]))
            if repo is None:
                return 404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"}
            return 200, {}, {"id": "/".join(parts[2:]), "private": repo["payload"].get("visibility") == "private"}
        if parts[:2] != ["api", "datasets"] or len(parts) < 6:
            return 404, {}, {"error": f"not implemented: {method} {'/'.join(parts)}"}
        repo_id, action, ref = "/".join(parts[2:4]), parts[4], parts[5]
        repo = self.repos.get(repo_id)
        record["kind"], record["ref"] = action, ref
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"}
        if action == "branch" and method == "POST":
            if ref in repo["refs"]:
                return 409, {}, {"error": "Reference already exists"}
            start = json.loads(body or b"{}").get("startingPoint", "main")
            repo["refs"][ref] = dict(repo["refs"][start])
            return 200, {}, {}
        if ref not in repo["refs"]:
            return 404, {"X-Error-Code": "RevisionNotFound"}, {"error": f"Invalid rev id: {ref}"}
        files = repo["refs"][ref]
        if action == "tree" and method == "GET":
            return 200, {}, [_tree_entry(path, content) for path, content in sorted(files.items())]
        if action == "preupload" and method == "POST":
            wanted = json.loads(body)["files"]
            record["paths"] = [item["path"] for item in wanted]
            return 200, {}, {"files": [{"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                                        "oid": _git_blob_id(files[item["path"]]) if item["path"] in files else None}
                                       for item in wanted]}
        if action == "commit" and method == "POST":
            self.commit_attempts += 1
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            record["commit"] = commit = {"ref": ref, "create_pr": query.get("create_pr") == "1", "summary": lines[0]["value"]["summary"],
                                         "files": {}, "deleted": []}
            for line in lines[1:]:
                if line["key"] == "file":
                    commit["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                elif line["key"] in ("deletedFile", "deletedFolder"):
                    commit["deleted"].append(line["value"]["path"])
                else:
                    return 400, {}, {"error": f"this fake hub takes regular files only, not {line['key']}"}
            if self.commit_attempts in self.drop_commit_attempts:
                return None, {}, None
            if self.commit_attempts in self.fail_commit_attempts:
                return 500, {}, {"error": "Internal Error - We're working hard to fix this as soon as possible!"}
            pr_url = None
            if commit["create_pr"]:
                repo["prs"] += 1
                ref = f"refs/pr/{repo['prs']}"
                repo["refs"][ref] = dict(files)
                pr_url = f"{self.url}/datasets/{repo_id}/discussions/{repo['prs']}"
            target = repo["refs"][ref]
            target.update(commit["files"])
            for path in commit["deleted"]:
                target.pop(path, None)
            oid = hashlib.sha1(f"{self.commit_attempts}".encode()).hexdigest()
            return 200, {}, {"commitUrl": f"{self.url}/datasets/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": pr_url}
        return 404, {}, {"error": f"not implemented: {method} {'/'.join(parts)}"}


def _git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _tree_entry(path, content):
    entry = {"type": "file", "path": path, "size": len(content), "oid": _git_blob_id(content)}
    if path.endswith(LFS_SUFFIXES):
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(content).hexdigest()}\nsize {len(content)}\n"
        entry |= {"oid": _git_blob_id(pointer.encode()),
                  "lfs": {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": len(pointer)}}
    return entry


def _handler_for(hub):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, extra, answer = hub.handle(self.command, self.path, headers, body)
            if status is None:  # the connection drops mid-request
                return
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if isinstance(answer, bytes) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_HEAD = _serve

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture
def hub():
    server = FakeHub()
    yield server
    server.close()


@pytest.fixture(scope="module")
def train(scored_sample, tmp_path_factory):
    folder = tmp_path_factory.mktemp("push") / "train"
    run_cli("mask", scored_sample, "-o", folder)
    return folder


def hub_env(hub_url, tmp_path, token=TOKEN):
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env |= {"HF_ENDPOINT": hub_url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def push(folder, hub, tmp_path, *args, check=True, token=TOKEN):
    return run_cli_process("push", folder, REPO, *args, check=check, env=hub_env(hub.url, tmp_path, token))


def copy_of(folder, tmp_path):
    """A private copy of the module's training folder: a push writes its staging folder inside."""
    import shutil

    target = tmp_path / "train"
    shutil.copytree(folder, target)
    return target


def front_matter(card: str) -> dict:
    import yaml

    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def parquet_rows(files: dict, prefix="data/train-"):
    tables = [pq.read_table(io.BytesIO(files[path])) for path in sorted(files) if path.startswith(prefix)]
    return pa.concat_tables(tables)


def assert_token_nowhere(result, hub, folder):
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    assert all(TOKEN.encode() not in request["body"] for request in hub.requests)
    for path in Path(folder).rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_push_uploads_parquet_files_and_a_card(train, hub, tmp_path):
    folder = copy_of(train, tmp_path)
    result = push(folder, hub, tmp_path, "--private")

    created = hub.requests_to("create")[0]["body"]
    assert json.loads(created) == {"name": "ftprep-demo", "organization": "someone", "visibility": "private", "type": "dataset"}
    files = hub.files()
    assert sorted(files) == [".gitattributes", "README.md", "data/train-00000-of-00003.parquet",
                             "data/train-00001-of-00003.parquet", "data/train-00002-of-00003.parquet", "ppl_histogram.png"]
    assert [commit["summary"] for commit in hub.commits()] == [
        "ftprep push default: Parquet files, part 1 of 1", "ftprep push default: dataset card"]
    assert result.stdout.strip().splitlines()[-1] == f"pushed to {REPO} (main): {hub.url}/datasets/{REPO}/commit/{_oid(2)}"

    uploaded, local = parquet_rows(files), load_table(train)
    assert uploaded.column_names == local.column_names == ["input_ids", "attention_mask", "labels"]
    for name in local.column_names:
        assert uploaded.column(name).to_pylist() == local.column(name).to_pylist()

    card = files["README.md"].decode()
    metadata = front_matter(card)
    assert metadata["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert metadata["license"] == "other" and metadata["task_categories"] == ["text-generation"]
    assert {"ftprep", "sft"} <= set(metadata["tags"])
    stats = json.loads((train / "stats.json").read_text())
    for fact in ("HuggingFaceTB/SmolLM2-135M-Instruct", "threshold (STM)", "perplexity above 2.5", "40 in, 40 out, 0 rejected",
                 f"{stats['assistant_tokens']:,}", f"{stats['masked_share']:.1%}", "![Perplexity of assistant tokens under the model](ppl_histogram.png)",
                 "load_dataset('someone/ftprep-demo', 'default', split='train')", "SFTTrainer"):
        assert fact in card, fact

    image = png_pixels(files["ppl_histogram.png"])
    assert image.shape == (240, 640, 3)
    assert count_color(image, (0x4C, 0x78, 0xA8)) > 5000 and count_color(image, (0xD6, 0x27, 0x28)) > 100  # bars, threshold line
    assert_token_nowhere(result, hub, folder)
    assert any(request["headers"].get("authorization") == f"Bearer {TOKEN}" for request in hub.requests)  # it did travel, in the header

    again = push(folder, hub, tmp_path)
    assert "nothing to push" in again.stdout and len(hub.commits()) == 2


def _oid(attempt):
    return hashlib.sha1(f"{attempt}".encode()).hexdigest()


def png_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB")).astype(int)


def count_color(image, color):
    return int((np.abs(image - np.array(color)).sum(axis=-1) < 12).sum())


@pytest.mark.parametrize("failure", ["server error", "dropped connection"])
@pytest.mark.slow
def test_an_interrupted_push_resumes_without_uploading_again(train, hub, tmp_path, failure):
    folder = copy_of(train, tmp_path)
    if failure == "server error":
        hub.fail_commit_attempts = {2}
    else:
        hub.drop_commit_attempts = {2}
    failed = push(folder, hub, tmp_path, "--files-per-commit", "1", check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    expected = "error: the Hub answered 500" if failure == "server error" else f"error: lost the connection to {hub.url}"
    assert failed.stderr.strip().splitlines()[-1].startswith(expected)
    assert failed.stderr.strip().endswith("rerun the same command to resume")
    first_run = len(hub.requests)
    assert [sorted(commit["files"]) for commit in hub.commits()] == [["data/train-00000-of-00003.parquet"]]

    result = push(folder, hub, tmp_path, "--files-per-commit", "1")
    assert "1 of 3 Parquet files are already in" in result.stdout
    sent = [path for request in hub.requests[first_run:] if request["kind"] == "preupload" for path in request["paths"]]
    assert "data/train-00000-of-00003.parquet" not in sent
    assert [sorted(commit["files"]) for commit in hub.commits()[1:]] == [
        ["data/train-00001-of-00003.parquet"], ["data/train-00002-of-00003.parquet"], ["README.md", "ppl_histogram.png"]]
    local = load_table(train)
    assert parquet_rows(hub.files()).column("labels").to_pylist() == local.column("labels").to_pylist()


@pytest.mark.slow
def test_revision_and_pull_request(train, hub, tmp_path):
    folder = copy_of(train, tmp_path)
    push(folder, hub, tmp_path, "--revision", "dev")
    assert [request["ref"] for request in hub.requests_to("branch")] == ["dev"]
    assert {commit["ref"] for commit in hub.commits()} == {"dev"}
    assert "README.md" in hub.files("dev") and "README.md" not in hub.files("main")
    assert json.loads(hub.requests_to("create")[0]["body"]).get("visibility") is None  # no --private: not sent

    result = push(folder, hub, tmp_path, "--create-pr", "--files-per-commit", "2")
    pr_commits = hub.commits()[2:]
    assert [(commit["ref"], commit["create_pr"]) for commit in pr_commits] == [("main", True), ("refs/pr/1", False), ("refs/pr/1", False)]
    assert result.stdout.strip().splitlines()[-1] == f"pull request: {hub.url}/datasets/{REPO}/discussions/1"
    assert "README.md" in hub.files("refs/pr/1") and "README.md" not in hub.files("main")

    again = push(folder, hub, tmp_path, "--create-pr")
    assert "continuing pull request" in again.stdout and "nothing to push" in again.stdout
    assert hub.repos[REPO]["prs"] == 1
    assert_token_nowhere(again, hub, folder)

    public = push(folder, hub, tmp_path, "--private", check=False)  # the repo exists and is public
    assert public.returncode == 1 and public.stderr.strip() == (
        f"error: {REPO} exists and is public: make it private on the Hub first, or push without --private")
    assert hub.repos[REPO]["prs"] == 1 and len(hub.commits()) == 5


@pytest.mark.slow
def test_a_second_config_keeps_the_first(train, scored_sample, hub, tmp_path):
    import shutil

    folder = copy_of(train, tmp_path)
    scored = tmp_path / "scored"
    shutil.copytree(scored_sample, scored)
    push(folder, hub, tmp_path)
    push(scored, hub, tmp_path, "--config-name", "scores", "--license", "apache-2.0")
    files = hub.files()
    assert "scores/train-00000-of-00003.parquet" in files and "scores/ppl_histogram.png" in files
    card = files["README.md"].decode()
    metadata = front_matter(card)
    assert [entry["config_name"] for entry in metadata["configs"]] == ["default", "scores"]
    assert metadata["configs"][1]["data_files"] == [{"split": "train", "path": "scores/train-*"}]
    assert metadata["license"] == "apache-2.0"
    assert "## Config `default`: threshold strategy" in card and "## Config `scores`: scored dataset" in card
    uploaded, local = parquet_rows(files, "scores/train-"), load_table(scored_sample)
    assert uploaded.column_names == local.column_names and uploaded.column("id").to_pylist() == local.column("id").to_pylist()
    np.testing.assert_array_equal(flat(uploaded, "logprobs"), flat(local, "logprobs"))  # NaN where unscored, on both sides


@pytest.mark.slow
def test_errors_are_one_line(train, hub, tmp_path):
    folder = copy_of(train, tmp_path)
    missing = push(folder, hub, tmp_path, check=False, token=None)
    assert missing.returncode == 1 and missing.stderr.strip() == (
        "error: no Hugging Face token: run `hf auth login` or set HF_TOKEN to a token with write access")
    refused = push(folder, hub, tmp_path, check=False, token="hf_wrong")
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        "error: the Hub refused the token (401 Unauthorized): run `hf auth login` again or set HF_TOKEN to a valid token"]
    started = time.monotonic()
    offline = run_cli_process("push", folder, REPO, check=False, env=hub_env("http://127.0.0.1:9", tmp_path))
    assert offline.returncode == 1 and offline.stderr.strip() == (
        "error: cannot reach http://127.0.0.1:9: check the network (or HF_ENDPOINT), then rerun to push")
    assert time.monotonic() - started < 15
    bad_id = push(folder, hub, tmp_path, "--config-name", "../up", check=False)
    assert bad_id.returncode == 1 and bad_id.stderr.startswith("error: --config-name '../up'")
    assert not hub.commits()


@pytest.mark.slow
def test_the_saved_login_is_used_without_hf_token(train, hub, tmp_path):
    folder = copy_of(train, tmp_path)
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text(TOKEN)  # where `hf auth login` saves it
    result = push(folder, hub, tmp_path, token=None)
    assert "pushed to" in result.stdout and "README.md" in hub.files()
    assert_token_nowhere(result, hub, folder)


# -- the staging folder and card, without a server ----------------------------------------------


def staged_card(folder, tmp_path, config_name="default"):
    from ftprep.manifest import open_run
    from ftprep.publish.staging import build_upload_folder, staging_folder, write_card_files

    staging = staging_folder(folder, config_name)
    staged = build_upload_folder(folder, staging, config_name)
    write_card_files(folder, staging, open_run(folder), REPO, config_name, None, None)
    return staging, staged


@pytest.mark.parametrize("config_name", ["default", "strict"])
@pytest.mark.slow
def test_the_staging_folder_loads_with_datasets(train, tmp_path, config_name):
    import datasets

    folder = copy_of(train, tmp_path)
    staging, staged = staged_card(folder, tmp_path, config_name)
    assert [item.rows for item in staged] == [16, 16, 8]
    loaded = datasets.load_dataset(str(staging), config_name, split="train", cache_dir=str(tmp_path / "cache"))
    local = load_table(train)
    assert loaded.num_rows == local.num_rows and loaded.column_names == local.column_names
    assert loaded["labels"] == local.column("labels").to_pylist()

    mtimes = {path: path.stat().st_mtime_ns for path in staging.rglob("*.parquet")}
    staged_card(folder, tmp_path, config_name)  # a rerun keeps the converted files
    assert {path: path.stat().st_mtime_ns for path in staging.rglob("*.parquet")} == mtimes


@pytest.mark.slow
def test_the_scored_card_snippet_gives_the_labels_of_ftprep_mask(scored_sample, train, tmp_path):
    import shutil

    import datasets

    scored = tmp_path / "scored"
    shutil.copytree(scored_sample, scored)
    staging, _ = staged_card(scored, tmp_path)
    code = re.search(r"```python\n(.*?)```", (staging / "README.md").read_text(), re.S).group(1)
    assert f"load_dataset({REPO!r}, 'default', split='train')" in code
    local_load = lambda *args, **kwargs: datasets.load_dataset(str(staging), "default", split="train", cache_dir=str(tmp_path / "cache"))
    namespace = {"load_dataset": local_load}
    exec(code.replace("from datasets import load_dataset", ""), namespace)
    labels = [list(row) for row in namespace["train"]["labels"]]
    assert labels == load_table(train).column("labels").to_pylist()


def test_stale_shards_of_the_config_are_removed_and_others_kept(tmp_path):
    from huggingface_hub.hf_api import RepoFile

    from ftprep.publish.push import plan_upload
    from ftprep.publish.staging import StagedFile

    staging = tmp_path / "staging"
    (staging / "data").mkdir(parents=True)
    (staging / "data" / "train-00000-of-00001.parquet").write_bytes(b"new shard")
    (staging / "README.md").write_text("card")
    same = b"card"
    remote = {path: RepoFile(path=path, size=size, oid=oid) for path, size, oid in [
        ("data/train-00000-of-00002.parquet", 10, "a"), ("data/train-00001-of-00002.parquet", 10, "b"),
        ("other/train-00000-of-00001.parquet", 10, "c"), ("README.md", len(same), _git_blob_id(same))]}
    plan = plan_upload(staging, [StagedFile("data/train-00000-of-00001.parquet", 5)], ["README.md"], remote, "default", 50)
    assert plan.stale == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert plan.last == [] and [[item.path for item in batch] for batch in plan.batches] == [["data/train-00000-of-00001.parquet"]]


# -- ftprep export --parquet: the same files in a local folder, without a token ----------------------------


def relative_files(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


@pytest.mark.slow
def test_export_writes_the_files_push_uploads_to_a_local_folder(train, scored_sample, tmp_path):
    import shutil

    import datasets

    folder, target = copy_of(train, tmp_path), tmp_path / "parquet"
    no_login = {"HF_TOKEN": None, "HF_HOME": str(tmp_path / "no-login"), "HF_HUB_OFFLINE": "1"}  # export needs no token
    result = run_cli("export", folder, "--parquet", target, env=no_login)
    assert relative_files(target) == ["README.md", "data/train-00000-of-00003.parquet", "data/train-00001-of-00003.parquet",
                                      "data/train-00002-of-00003.parquet", "ppl_histogram.png"]
    assert result.stdout.strip().splitlines()[-1].startswith(f"{target}: 3 Parquet files (40 rows) and a dataset card")
    # push's writer made them: byte for byte the files a push stages (the card names the folder, not a repo).
    staging = folder / ".ftprep-push" / "default"
    for name in relative_files(target):
        if name != "README.md":
            assert (target / name).read_bytes() == (staging / name).read_bytes(), name
    card = (target / "README.md").read_text()
    assert front_matter(card)["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert f"load_dataset({str(target.resolve())!r}, 'default', split='train')" in card and "# parquet\n" in card

    loaded = datasets.load_dataset(str(target), split="train", cache_dir=str(tmp_path / "cache"))
    local = load_table(train)
    assert loaded.column_names == local.column_names and loaded["labels"] == local.column("labels").to_pylist()

    # A second config joins the first; the first one's files and card section stay.
    scored = tmp_path / "scored"
    shutil.copytree(scored_sample, scored)
    run_cli("export", scored, "--parquet", target, "--config-name", "scores")
    card = (target / "README.md").read_text()
    assert [entry["config_name"] for entry in front_matter(card)["configs"]] == ["default", "scores"]
    assert "## Config `default`: threshold strategy" in card and "## Config `scores`: scored dataset" in card
    assert "data/train-00000-of-00003.parquet" in relative_files(target)
    scores = datasets.load_dataset(str(target), "scores", split="train", cache_dir=str(tmp_path / "cache"))
    assert scores["id"] == load_table(scored_sample).column("id").to_pylist()


@pytest.mark.slow
def test_a_new_export_replaces_the_configs_old_shards(train, tiny_model_dir, tmp_path):
    target = tmp_path / "parquet"
    run_cli("export", copy_of(train, tmp_path), "--parquet", target)  # 3 shards
    run_cli("score", DATA / "sample.jsonl", "--limit", "4", "--model", tiny_model_dir, "-o", tmp_path / "scored")
    run_cli("mask", tmp_path / "scored", "-o", tmp_path / "one")  # 1 shard
    run_cli("export", tmp_path / "one", "--parquet", target)
    assert relative_files(target) == ["README.md", "data/train-00000-of-00001.parquet", "ppl_histogram.png"]


@pytest.mark.slow
def test_export_writes_over_nothing_but_an_earlier_export(train, tmp_path):
    folder = copy_of(train, tmp_path)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    refused = run_cli("export", folder, "--parquet", other, check=False)
    assert refused.returncode == 1 and "holds other files" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert relative_files(other) == ["notes.txt"]
    inside = run_cli("export", folder, "--parquet", folder / "parquet", check=False)
    assert inside.returncode == 1 and "inside" in inside.stderr and not (folder / "parquet").exists()
    missing = run_cli("export", folder, check=False)
    assert missing.returncode == 2 and "--parquet" in missing.stderr


def test_png_round_trips_through_pillow():
    from ftprep.publish.png import bar_chart, png_bytes

    image = bar_chart([3, 0, 7], ["1", "2.5", "10"], marker_at=1.0, width=120, height=60)
    assert (png_pixels(png_bytes(image)) == image).all()
    assert count_color(image, (0x4C, 0x78, 0xA8)) > 100 and count_color(image, (0xD6, 0x27, 0x28)) > 10


def test_the_card_counts_masked_as_no_loss_and_gives_soft_weight_quantiles():
    from ftprep.manifest import RunManifest
    from ftprep.publish.card import facts_table

    manifest = {"stage": "mask", "counts": {"rows_in": 2, "rows_out": 2, "rows_rejected": 0}, "versions": {},
                "config": {"strategy": "soft", "weight_fn": "gauss", "sigma": 0.75, "min_weight": 0.0, "keep_eos": True},
                "model": {"spec": "smollm2-135m", "backend": "hf", "dtype": "float32"},
                "scored": {"run_identity": {"input": {"path": "/somewhere/data.jsonl"}}}}
    stats = {"assistant_tokens": 100, "masked_share": 0.25, "mean_weight": 0.5,
             "weight_quantiles": {"p5": 0.0, "p25": 0.0, "p50": 0.644, "p75": 0.997, "p95": 1.0}}
    table = facts_table(RunManifest.from_json(manifest), stats, {}, ["input_ids", "labels", "loss_weights"])
    assert "| masked share of assistant tokens (no loss: label -100 or weight 0) | 25.0% |" in table
    assert "| weight quantiles | p5 0.000, p25 0.000, p50 0.644, p75 0.997, p95 1.000 |" in table
