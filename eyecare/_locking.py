"""One model, several threads: calls take turns. Generation keeps per-model state on the device (the KV
cache of its sequences) from the prompt to the last token, so a whole generation holds the lock, not
just each device call (the C core already serializes those)."""
from __future__ import annotations

import threading
from contextlib import contextmanager


class ModelLock:
    def __init__(self, what: str):
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._what = what

    @contextmanager
    def held(self):
        me = threading.get_ident()
        if self._owner == me:
            # The same thread again, e.g. chat() while its own stream is still open: waiting would
            # deadlock, and going ahead would overwrite the open stream's cache.
            raise RuntimeError(f"this {self._what} is already generating in this thread (an unfinished stream?); "
                               "finish or close that first")
        self._lock.acquire()
        self._owner = me
        try:
            yield
        finally:
            self._owner = None
            self._lock.release()
