"""ftprep: rewrite SFT datasets so fine-tuning forgets less.

The commands as Python functions, for notebooks and scripts; each runs the same code as the
command of the same name and returns a `datasets.Dataset`:

    import ftprep
    scored = ftprep.score("data.jsonl", model="smollm2-135m")
    train = ftprep.mask(scored, strategy="threshold", threshold=2.5, output="train")
"""

from ftprep.stages.errors import FtprepError, RowError

__all__ = ["FtprepError", "RowError", "__version__", "mask", "regen", "score"]


def __getattr__(name: str):
    # The version is read from the package metadata when asked for: importlib.metadata is a
    # noticeable part of the command line's start-up, which needs no version.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("ftprep")
        except PackageNotFoundError:  # run from a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'ftprep' has no attribute {name!r}")


def score(data, *, output=None, overwrite: bool = False, engine: str = "local", **options):
    """`ftprep score` as a function: `data` is a file, a dataset folder, a hub id, a
    `datasets.Dataset` or a list of rows; `options` are the command's settings by their Python
    names (model=, top_k=, max_length=...). With `output`, a killed run resumes there; without,
    the result goes to a new temporary folder. Returns the scored `datasets.Dataset`."""
    from ftprep.commands.score import ScoreCommand, ScoreSettings

    return _run("score", ScoreSettings, ScoreCommand, {"input": _input_path(data)}, output, overwrite, engine, options)


def regen(data, *, output=None, overwrite: bool = False, engine: str = "local", **options):
    """`ftprep regen` as a function (see `score` for `data` and `output`); returns the dataset
    of rewritten conversations, which `score` takes."""
    from ftprep.commands.regen import RegenCommand, RegenSettings

    return _run("regen", RegenSettings, RegenCommand, {"input": _input_path(data)}, output, overwrite, engine, options)


def mask(scored, *, output=None, overwrite: bool = False, engine: str = "local", **options):
    """`ftprep mask` as a function: `scored` is what `score` returned, or a folder it wrote;
    `options` as the command's (strategy=, threshold=, target=...). Returns the training dataset."""
    from ftprep.commands.mask import MaskCommand, mask_settings

    return _run("mask", mask_settings(), MaskCommand, {"scored": _folder_of(scored)}, output, overwrite, engine, options)


def _run(name, settings_class, command_class, given, output, overwrite, engine, options):
    from functools import partial

    import datasets

    from ftprep.engines import EngineOptions
    from ftprep.runner import run
    from ftprep.stages.errors import PYTHON, SettingError

    if output is None:
        import tempfile

        output = tempfile.mkdtemp(prefix=f"ftprep-{name}-")
    try:
        settings = settings_class.from_options(name, options, output=str(output), **given)
        run(partial(command_class, settings), engine=EngineOptions(engine=engine), overwrite=overwrite, echo=_log)
    except SettingError as error:
        # The caller typed keyword arguments, not flags: name the settings as they wrote them.
        raise error.named_for(PYTHON) from None
    return datasets.load_from_disk(str(output))


def _input_path(data) -> str:
    """A path for the readers: as given, or an in-memory dataset saved once under a folder
    named by its fingerprint, so that the same data resumes the same run."""
    import os

    if isinstance(data, (str, os.PathLike)):
        return str(data)
    import datasets

    if isinstance(data, list):
        data = datasets.Dataset.from_list(data)
    if not isinstance(data, datasets.Dataset):
        raise FtprepError(f"cannot read {type(data).__name__}: give a path, a datasets.Dataset or a list of rows")
    from ftprep.models import cache_dir

    folder = cache_dir() / "inputs" / data._fingerprint
    if not (folder / "state.json").is_file():
        data.save_to_disk(str(folder))
    return str(folder)


def _folder_of(scored) -> str:
    """The folder behind a dataset that `score` returned (or the path given)."""
    import os
    from pathlib import Path

    if isinstance(scored, (str, os.PathLike)):
        return str(scored)
    files = getattr(scored, "cache_files", None)
    if not files:
        raise FtprepError("mask needs a scored dataset that ftprep wrote: what ftprep.score returned, or its folder")
    return str(Path(files[0]["filename"]).parent)


def _log(message: str) -> None:
    import logging

    logging.getLogger("ftprep").info(message)
