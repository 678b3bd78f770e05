"""Progress on long work: a bar on a terminal, a plain line every PLAIN_LINE_SECONDS otherwise.

Both count input rows and tokens as stats.json does (rows_in, tokens): a model stage reports
each batch as it finishes, and the end of a shard tops the counts up to what it committed
(rejected rows, rows with nothing to score), so the last line's numbers are stats.json's.
"""

from __future__ import annotations

import os
import sys
import time

from ftprep.stages.errors import FtprepError

# Without a terminal (a log file, a CI job): one plain line this often, and one at the end.
# FTPREP_PROGRESS_SECONDS sets another period (0: a line at every update).
PLAIN_LINE_SECONDS = 30.0


def plain_line_seconds() -> float:
    value = os.environ.get("FTPREP_PROGRESS_SECONDS", "").strip()
    if not value:
        return PLAIN_LINE_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise FtprepError(f"FTPREP_PROGRESS_SECONDS={value!r}: give the seconds between progress lines, e.g. 30")
    return seconds


def notice(message: str) -> None:
    """A one-off line about long work starting (a model conversion), on stderr like progress; not with -q."""
    from ftprep.verbosity import QUIET, level

    if level() == QUIET:
        return
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


class Progress:
    def __init__(self, label: str, total_rows: int | None, interval: float | None = None, stream=None, unit: str = "row"):
        self.unit = unit
        self.label = label
        self.total = total_rows
        self.stream = stream or sys.stderr
        self.rows = self.tokens = self.printed_rows = 0
        self.started = self.last_line = time.monotonic()
        self.interval = plain_line_seconds() if interval is None else interval
        self.bar = None
        from ftprep.verbosity import QUIET, level

        self.silent = level() == QUIET  # -q: the counts are kept, nothing is shown
        if self.stream.isatty() and not self.silent:
            from tqdm import tqdm

            self.bar = tqdm(total=total_rows, desc=label, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, rows: int, tokens: int = 0) -> None:
        self.rows += rows
        self.tokens += tokens
        if self.silent:
            return
        if self.bar is not None:
            self.bar.update(rows)
            if self.tokens:
                self.bar.set_postfix_str(f"{self.tokens:,} tok, {self.tokens / self.elapsed():,.0f} tok/s", refresh=False)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self.printed_rows = self.rows
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def close(self) -> None:
        if self.silent:
            return
        if self.bar is not None:
            self.bar.close()
        elif self.rows != self.printed_rows:
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def _line(self) -> str:
        elapsed = self.elapsed()
        total = f"/{self.total}" if self.total is not None else ""
        tokens = f", {self.tokens:,} tokens ({self.tokens / elapsed:,.0f} tok/s)" if self.tokens else ""
        eta = ""
        if self.total and 0 < self.rows < self.total:
            eta = f", ETA {clock(elapsed * (self.total - self.rows) / self.rows)}"
        return f"{self.label}: {self.rows}{total} {self.unit}s{tokens}, {clock(elapsed)}{eta}"


def clock(seconds: float) -> str:
    """12s, 3m05s, 2h04m: short and unambiguous in a log line."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ShardProgress:
    """One shard's progress: batches as the model stage finishes them, then, at the shard's
    end, the rest of its committed counts (rows rejected before the model, rows with nothing
    to score), so each shard adds exactly its rows_in and tokens."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.rows = self.tokens = 0

    def batch(self, rows: int, tokens: int) -> None:
        self.rows += rows
        self.tokens += tokens
        self.progress.update(rows, tokens)

    def finish(self, rows: int, tokens: int) -> None:
        self.progress.update(max(rows - self.rows, 0), max(tokens - self.tokens, 0))
        self.rows = self.tokens = 0
