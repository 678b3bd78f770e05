"""Read ahead: the next shard read and run through the CPU stages in a background thread while
the model works on the current one, so that a GPU does not wait for the reader between shards.

Results come in the order of the items, and each is what the same `prepare` gives in the
caller's thread: the output is the same with or without reading ahead. Until `start()`, items
are prepared when asked for, in the caller's thread: the local engine starts the thread only
once its model is loaded, so that vLLM forks its engine process from a process with one thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable

_VALUE, _ERROR, _END = "value", "error", "end"
# How often a blocked reader looks whether the consumer has gone.
POLL_SECONDS = 0.1


class ReadAhead:
    """`prepare(item)` for each item, in order, up to `depth` results ahead of the consumer once
    started. An error in `prepare` is raised in the consumer, at the item that raised it."""

    def __init__(self, items: Iterable, prepare: Callable, depth: int = 1):
        self._items = iter(items)
        self._prepare = prepare
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """From now on the next items are prepared in a background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._fill, name="ftprep-read-ahead", daemon=True)
            self._thread.start()

    def __iter__(self):
        while True:
            if self._thread is None:
                item = next(self._items, _END)
                if item is _END:
                    return
                yield self._prepare(item)
                continue
            kind, value = self._ready.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value

    def close(self) -> None:
        """Stop reading ahead: the thread ends after the item it is preparing, whose result is
        dropped (a run stopped early reads at most one shard more than it used)."""
        self._closed.set()
        while not self._ready.empty():
            self._ready.get_nowait()

    def _fill(self) -> None:
        try:
            for item in self._items:
                if self._closed.is_set() or not self._put(_VALUE, self._prepare(item)):
                    return
            self._put(_END, None)
        except BaseException as error:  # raised in the consumer, as if it had prepared the item itself
            self._put(_ERROR, error)

    def _put(self, kind: str, value) -> bool:
        while not self._closed.is_set():
            try:
                self._ready.put((kind, value), timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False
