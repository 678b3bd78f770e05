"""Errors a user can fix. The CLI prints them as one line and exits non-zero."""


class FtprepError(Exception):
    """A run-level problem (bad path, unknown model, unknown format): stops the run at once."""


class RowError(ValueError):
    """A problem with one input row: the row goes to rejects.jsonl with this reason."""
