"""The run manifest, ftprep.json: what an output is, how it was made and what it holds, typed and
versioned. Commands build a `RunManifest` and the writers put it down with `write_manifest`, last,
with every file's size and SHA-256; readers open an output with `open_run`, which checks those
files and returns the typed manifest. No other module reads or writes ftprep.json.

A folder output (score, regen, mask) holds its manifest as FOLDER/ftprep.json; a file output
(hft-plan's plan, iv's vectors) has it beside the file, as FILE.ftprep.json.

Schema versions, each read by every later ftprep:
- 0 (no `schema_version` key): what ftprep wrote before this module, the same fields as 1.
- 1: `schema_version`; file outputs get a manifest.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftprep.stages.errors import FtprepError
from ftprep.writers import file_problem, listed_data_files, read_json_file, write_json_atomic

SCHEMA_VERSION = 1
MANIFEST = "ftprep.json"
FILE_MANIFEST_SUFFIX = ".ftprep.json"


@dataclass(frozen=True)
class FileRecord:
    """What a written file must still be."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Counts:
    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0

    @classmethod
    def from_stats(cls, stats: Mapping) -> "Counts":
        """The rows in, out and rejected of a run's merged stats (0 where no shard counted any)."""
        return cls(**{item.name: stats.get(item.name, 0) for item in dataclasses.fields(cls)})


@dataclass(frozen=True)
class ModelInfo:
    """The model a run used, as resolved (what --model named, where it is, its fingerprint)."""

    spec: str
    path: str | None = None
    fingerprint: str | None = None
    backend: str | None = None
    device: str | None = None
    dtype: str | None = None
    attention: str | None = None


@dataclass(frozen=True)
class TokenizerInfo:
    fingerprint: str | None = None
    end_of_turn_ids: tuple[int, ...] | None = None  # score: the ids that end an assistant turn
    uses_generation_markers: bool | None = None


@dataclass(frozen=True)
class Upstream:
    """An output this one was made from: mask's scored dataset, or its --against scores."""

    path: str
    run_identity: Mapping[str, Any] | None = None
    model: ModelInfo | None = None


@dataclass(frozen=True)
class InputSource:
    """Where the rows of a run came from: a local file or folder, or a hub dataset."""

    path: str | None = None
    hub: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class RunManifest:
    """ftprep.json. Fields in the order they are written; a field left None is not written."""

    stage: str  # score | regen | mask | hft-plan | iv
    config: Mapping[str, Any]  # the command's settings that shape the output, by their Python names
    format: str | None = None  # the input format read (score, regen)
    template: str | None = None  # regen: the rephrase template used
    sampling: Mapping[str, Any] | None = None  # regen: the sampling parameters
    scored: Upstream | None = None  # mask
    model: ModelInfo | None = None
    tokenizer: TokenizerInfo | None = None
    entropy_kind: str | None = None  # score: full, or topk-N where the engine only sees the top N
    versions: Mapping[str, str] = field(default_factory=dict)
    counts: Counts | None = None
    against: Upstream | None = None  # mask --against
    run_identity: Mapping[str, Any] | None = None  # what a resumed run must share; set by the writer
    files: Mapping[str, FileRecord] | None = None  # set by the writer
    schema_version: int = SCHEMA_VERSION

    def settings_as(self, settings_class):
        """The config as a typed settings object: `settings_class.from_config(config)` where it
        has one, else the class built from the config's fields of its names."""
        if hasattr(settings_class, "from_config"):
            return settings_class.from_config(self.config)
        names = {item.name for item in dataclasses.fields(settings_class)}
        return settings_class(**{key: value for key, value in self.config.items() if key in names})

    @property
    def input_source(self) -> InputSource:
        """The input of the run this output was made from (for mask: of its scored dataset)."""
        identity = self.scored.run_identity if self.scored is not None else self.run_identity
        source = (identity or {}).get("input") or {}
        return InputSource(path=source.get("path"), hub=source.get("hub"), split=source.get("split"))

    @property
    def ftprep_version(self) -> str | None:
        return self.versions.get("ftprep")

    @property
    def rows_out(self) -> int:
        return self.counts.rows_out if self.counts is not None else 0

    def to_json(self) -> dict:
        """The JSON object ftprep.json holds, `schema_version` first."""
        data = {"schema_version": self.schema_version}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name != "schema_version" and value is not None:
                data[item.name] = _plain(value)
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> "RunManifest":
        """A manifest of any schema version up to this one; fields it lacks take their defaults."""
        version = data.get("schema_version", 0)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise FtprepError(f"ftprep.json has schema version {version}, newer than this ftprep reads ({SCHEMA_VERSION}): "
                              "upgrade ftprep")
        return cls(
            stage=data.get("stage", ""),
            config=dict(data.get("config") or {}),
            format=data.get("format"),
            template=data.get("template"),
            sampling=data.get("sampling"),
            scored=_upstream(data.get("scored")),
            model=_model(data.get("model")),
            tokenizer=_tokenizer(data.get("tokenizer")),
            entropy_kind=data.get("entropy_kind"),
            versions=dict(data.get("versions") or {}),
            counts=Counts(**data["counts"]) if isinstance(data.get("counts"), Mapping) else None,
            against=_upstream(data.get("against")),
            run_identity=data.get("run_identity"),
            files=({name: FileRecord(**record) for name, record in data["files"].items()}
                   if isinstance(data.get("files"), Mapping) else None),
            schema_version=version,
        )


def _plain(value):
    """A field's value as JSON data: dataclasses as objects without their None fields."""
    if dataclasses.is_dataclass(value):
        return {item.name: _plain(getattr(value, item.name)) for item in dataclasses.fields(value)
                if getattr(value, item.name) is not None}
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _model(data) -> ModelInfo | None:
    if not isinstance(data, Mapping):
        return None
    names = {item.name for item in dataclasses.fields(ModelInfo)}
    return ModelInfo(**{key: value for key, value in data.items() if key in names})


def _tokenizer(data) -> TokenizerInfo | None:
    if not isinstance(data, Mapping):
        return None
    ids = data.get("end_of_turn_ids")
    return TokenizerInfo(fingerprint=data.get("fingerprint"), end_of_turn_ids=tuple(ids) if ids is not None else None,
                         uses_generation_markers=data.get("uses_generation_markers"))


def _upstream(data) -> Upstream | None:
    if not isinstance(data, Mapping):
        return None
    return Upstream(path=data.get("path"), run_identity=data.get("run_identity"), model=_model(data.get("model")))


# -- where it lives, writing and reading ----------------------------------------------------


def manifest_path(output: Path) -> Path:
    """FOLDER/ftprep.json for a folder output, FILE.ftprep.json beside a file output."""
    output = Path(output)
    return output / MANIFEST if output.is_dir() else file_manifest_path(output)


def file_manifest_path(output: Path) -> Path:
    return Path(output).with_name(Path(output).name + FILE_MANIFEST_SUFFIX)


def write_manifest(path: Path, manifest: RunManifest) -> None:
    """ftprep.json (or a file output's manifest) at `path`, atomically: written last, it is what
    makes an output finished."""
    write_json_atomic(Path(path), manifest.to_json())


def load_manifest(path: Path) -> RunManifest | None:
    """The manifest at `path` (a manifest file) as written, files unchecked; None where there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    data = read_json_file(path, "ftprep's manifest")
    if not isinstance(data, dict):
        raise FtprepError(f"{path} is damaged (not a manifest): rerun the command that wrote it")
    try:
        return RunManifest.from_json(data)
    except (TypeError, ValueError, AttributeError) as error:
        raise FtprepError(f"{path} is damaged (not a manifest: {error}): rerun the command that wrote it") from error


def output_problem(folder: Path, manifest: RunManifest, quick: bool = False) -> str | None:
    """Why a finished output folder is not what its manifest says was written; None if it is.
    Folders from before checksums were recorded are only checked for their data files."""
    folder = Path(folder)
    if manifest.files is None:
        missing = [path for path in listed_data_files(folder) if not path.is_file()]
        return f"{missing[0].name} is missing" if missing else None
    problem = files_problem(folder, manifest.files, quick)
    if problem:
        return problem
    try:
        stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "stats.json is missing or not valid JSON"
    if not isinstance(stats, dict):  # valid JSON is not enough: stats and the report read its keys
        return "stats.json is not a stats object"
    listed = [path.name for path in listed_data_files(folder)]
    written = [name for name in manifest.files if name.startswith("data-")]
    if listed != written:
        return f"state.json lists {len(listed)} data files, {len(written)} were written"
    return None


def files_problem(folder: Path, records: Mapping[str, FileRecord], quick: bool = False) -> str | None:
    """The first of `records` (by name, under `folder`) that is missing or changed; None if none."""
    for name, record in records.items():
        problem = file_problem(Path(folder) / name, dataclasses.asdict(record), quick)
        if problem:
            return problem
    return None


_CHECKED: set = set()


def open_run(output: Path, *, stages: tuple[str, ...] | None = None, refusal: str | None = None,
             missing_ok: bool = False) -> RunManifest | None:
    """The manifest of the output at `output` (a folder, or a file with its manifest beside it),
    once its files are checked against it: a command never reads a damaged output as if it were
    whole. Checked once per process while the files stay as they were.

    Where there is no manifest, or it is of none of `stages`: FtprepError(`refusal`), or None with
    `missing_ok`. Where a file no longer matches: FtprepError naming it."""
    output = Path(output)
    path = manifest_path(output)
    manifest = load_manifest(path)
    if manifest is None or (stages is not None and manifest.stage not in stages):
        if missing_ok and manifest is None:
            return None
        raise FtprepError(refusal or f"{output} is not an ftprep output (no {MANIFEST})")
    problem = missing_fields(manifest)
    if problem:
        raise FtprepError(f"{path} is not a manifest ftprep wrote ({problem}): give a folder written by ftprep score, "
                          "regen or mask, or rerun the command that wrote it")
    location = output if path.name == MANIFEST else output.parent
    # Keyed by every file's size and time: a file changed since it was checked is checked again.
    names = [path.name, *(manifest.files or {})]
    key = (str(path.resolve()), *(_stat_key(location / name) for name in names))
    if key not in _CHECKED:
        problem = output_problem(location, manifest) if path.name == MANIFEST else files_problem(location, manifest.files or {})
        if problem:
            raise FtprepError(f"{output} is damaged: {problem}; rerun the command that wrote it")
        _CHECKED.add(key)
    return manifest


# What the commands that read a finished output rely on, by the stage that wrote it: a foreign
# folder's ftprep.json (someone else's file of that name) is refused by name, not by a KeyError later.
REQUIRED_FIELDS = {
    "score": ("model.path", "model.spec", "tokenizer.end_of_turn_ids", "counts"),
    "regen": ("model.path", "model.spec", "counts"),
    "mask": ("config.strategy", "model.path", "model.spec", "tokenizer.end_of_turn_ids", "counts", "scored.path"),
    "hft-plan": (),
    "iv": (),
}


def missing_fields(manifest: RunManifest) -> str | None:
    """What a manifest lacks that ftprep's of its stage have; None if nothing."""
    if manifest.stage not in REQUIRED_FIELDS:
        return f"its stage is {manifest.stage!r}, not one of {', '.join(REQUIRED_FIELDS)}" if manifest.stage else "it names no stage"
    for name in REQUIRED_FIELDS[manifest.stage]:
        value = manifest
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
        if value is None:
            return f"no {name}"
    return None


def _stat_key(path: Path) -> tuple:
    try:
        stat = path.stat()
    except OSError:
        return (path.name, None)
    return (path.name, stat.st_size, stat.st_mtime_ns, stat.st_ino)
