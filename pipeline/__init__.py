"""ftprep: rewrite SFT datasets so fine-tuning forgets less.

The commands as Python functions, for notebooks and scripts; each runs the same code as the
command of the same name and returns a `datasets.Dataset`:

    import ftprep
    scored = ftprep.score("data.jsonl", model="smollm2-135m")
    train = ftprep.mask(scored, strategy="threshold", threshold=2.5, output="train")
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ftprep")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
