"""The run manifest: outputs written before it had a schema version still open, typed; what a
manifest writes reads back the same; a changed file or a newer schema is refused."""

import json
import shutil

import pytest
from conftest import REPO

from ftprep.manifest import SCHEMA_VERSION, Counts, FileRecord, ModelInfo, RunManifest, TokenizerInfo, open_run, write_manifest
from ftprep.stages.errors import FtprepError
from ftprep.stages.mask_settings import MaskStageSettings, describe

SCHEMA0 = REPO / "tests" / "fixtures" / "schema0"


def test_outputs_of_schema_0_open_with_their_fields_typed():
    scored = open_run(SCHEMA0 / "scored", stages=("score",))
    assert scored.schema_version == 0 and scored.stage == "score"
    assert scored.counts == Counts(rows_in=2, rows_out=2, rows_rejected=0)
    assert scored.model.spec == "smollm2-135m" and scored.model.dtype == "float32" and scored.model.backend == "hf"
    assert scored.tokenizer.end_of_turn_ids == (2,) and scored.entropy_kind == "full"
    assert scored.config["limit"] == 2 and scored.input_source.path.endswith("data/sample.jsonl")
    assert set(scored.files) == {"data-00000-of-00001.arrow", "state.json", "dataset_info.json", "rejects.jsonl"}
    assert all(isinstance(record, FileRecord) for record in scored.files.values())

    train = open_run(SCHEMA0 / "train", stages=("mask",))
    settings = train.settings_as(MaskStageSettings)
    assert settings.strategy == "threshold" and settings.options.threshold == 2.5 and settings.keep_eos
    assert describe(settings).startswith("threshold (STM)")
    assert train.scored.run_identity == scored.run_identity and train.input_source == scored.input_source
    assert train.model == scored.model and train.tokenizer == scored.tokenizer

    regen = open_run(SCHEMA0 / "regen", stages=("regen",))
    assert regen.sampling["temperature"] == 0.7 and regen.template and regen.rows_out == 2


def test_a_manifest_reads_back_as_it_was_written(tmp_path):
    manifest = RunManifest(stage="score", config={"top_k": 0, "limit": None}, format="messages",
                           model=ModelInfo(spec="m", path="/m", fingerprint="f", backend="hf"),
                           tokenizer=TokenizerInfo(fingerprint="t", end_of_turn_ids=(2, 7), uses_generation_markers=False),
                           entropy_kind="full", versions={"ftprep": "1"}, counts=Counts(3, 2, 1), run_identity={"command": "score"},
                           files={})
    write_manifest(tmp_path / "ftprep.json", manifest)
    data = json.loads((tmp_path / "ftprep.json").read_text())
    assert list(data)[:3] == ["schema_version", "stage", "config"] and data["schema_version"] == SCHEMA_VERSION
    assert "scored" not in data and data["model"] == {"spec": "m", "path": "/m", "fingerprint": "f", "backend": "hf"}
    assert RunManifest.from_json(data) == manifest


def test_a_changed_file_and_a_newer_schema_are_refused(tmp_path):
    folder = tmp_path / "scored"
    shutil.copytree(SCHEMA0 / "scored", folder)
    with (folder / "data-00000-of-00001.arrow").open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(FtprepError, match="is damaged: data-00000-of-00001.arrow does not match its checksum"):
        open_run(folder)

    newer = tmp_path / "newer"
    shutil.copytree(SCHEMA0 / "scored", newer)
    data = json.loads((newer / "ftprep.json").read_text())
    (newer / "ftprep.json").write_text(json.dumps({**data, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(FtprepError, match="newer than this ftprep reads"):
        open_run(newer)


def test_a_missing_or_foreign_output_is_refused_with_the_callers_words(tmp_path):
    assert open_run(tmp_path, missing_ok=True) is None
    with pytest.raises(FtprepError, match="is not an ftprep output"):
        open_run(tmp_path)
    with pytest.raises(FtprepError, match="^run ftprep mask first$"):
        open_run(SCHEMA0 / "scored", stages=("mask",), refusal="run ftprep mask first")
