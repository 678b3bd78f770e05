"""ftprep: rewrite SFT datasets so fine-tuning forgets less.

Every command is a Python function too, for notebooks and scripts, with the command's options as
keyword arguments (help(ftprep.mask) lists them); each runs the same code as the command:

    import ftprep
    scored = ftprep.score("data.jsonl", model="smollm2-135m")   # a datasets.Dataset
    train = ftprep.mask(scored, strategy="threshold", threshold=2.5, output="train")
    train.rejected, train.stats["masked_share"]                  # what the run reported
    ftprep.stats("train"), ftprep.export_config("train", target="axolotl")

score, regen, mask, stats, report, inspect, export, export_config, push, iv, hft_plan: see
ftprep.api for how they are made. ftprep/__init__.pyi spells them out for editors.
"""

from ftprep.stages.errors import FtprepError, RowError

FUNCTIONS = ("score", "regen", "mask", "inspect", "stats", "report", "export_config", "export", "push", "hft_plan", "iv")
__all__ = ["FtprepError", "RowError", "RowsRejectedWarning", "RunDataset", "__version__", *FUNCTIONS]


def __getattr__(name: str):
    # Made when first asked for, so that `import ftprep` (and the command line's start-up) imports
    # no command: the version from the package metadata, the functions from their commands.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("ftprep")
        except PackageNotFoundError:  # run from a source tree that was never installed
            return "0+unknown"
    if name in FUNCTIONS:
        from ftprep.api import function

        return function(name)
    if name in ("RunDataset", "RowsRejectedWarning"):
        from ftprep import results

        return getattr(results, name)
    raise AttributeError(f"module 'ftprep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
