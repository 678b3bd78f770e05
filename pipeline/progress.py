"""Progress on long work: a bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time


def notice(message: str) -> None:
    """A one-off line about long work starting (a model conversion), on stderr like progress."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


class Progress:
    def __init__(self, label: str, total_rows: int | None, interval: float = 10.0, stream=None, unit: str = "row"):
        self.unit = unit
        self.label = label
        self.total = total_rows
        self.stream = stream or sys.stderr
        self.rows = self.tokens = self.printed_rows = 0
        self.started = self.last_line = time.monotonic()
        self.interval = interval
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_rows, desc=label, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, rows: int, tokens: int = 0) -> None:
        self.rows += rows
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(rows)
            if self.tokens:
                self.bar.set_postfix_str(f"{self.tokens / self.elapsed():,.0f} tok/s", refresh=False)
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
        if self.bar is not None:
            self.bar.close()
        elif self.rows != self.printed_rows:
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def _line(self) -> str:
        total = f"/{self.total}" if self.total is not None else ""
        rate = f", {self.tokens / self.elapsed():,.0f} tok/s" if self.tokens else ""
        return f"{self.label}: {self.rows}{total} {self.unit}s, {self.elapsed():.0f}s{rate}"
