"""Append-only JSONL files that survive a kill: the persistence of `bench run`, `bench judge` and the
data engine.

Each row is one line, written with a single write() and flushed at once, so a process killed at any
moment leaves every finished row on disk and at most one partial last line. Reading drops that
partial line (and with ``repair=True`` cuts it from the file, so appending continues cleanly); a
caller resumes by skipping the keys already present. Nothing is ever rewritten in place.

    log = AppendLog(path)                 # creates the folder; fails before any work if unwritable
    done = {row["id"] for row in read_rows(path, repair=True)}
    for item in todo:
        if item.id not in done:
            log.append({"id": item.id, ...})   # thread-safe: workers may append concurrently
    log.close()                           # fsync

Errors are raised as ``error`` (an exception class the caller chooses, ValueError by default), with
messages that name the file and line.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Iterable, Type


def parse_lines(text: str):
    """(line number, value, None) for each non-blank line of JSONL text, or (line number, None, message) for a
    line that is not JSON (the message says what and at which column): for readers that report bad lines
    their own way (dataset validation, data-engine manifests)."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, None, f"{exc.msg} at column {exc.colno}"
            continue
        yield lineno, value, None


def read_rows(path, *, repair: bool = False, what: str = "row", required: Iterable[str] = ("id",),
              error: Type[Exception] = ValueError) -> list:
    """Every complete line of `path` as a dict (none if the file does not exist). `what` names a
    line in error messages ("prediction", "judgment"); each row must be an object with the
    `required` keys. A last line without its newline is a write cut short by a kill: it is ignored,
    and with `repair` removed from the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    complete = data[: data.rfind(b"\n") + 1]
    if repair and len(complete) != len(data):
        try:
            with open(path, "r+b") as f:
                f.truncate(len(complete))
        except OSError as exc:
            raise error(f"cannot repair the cut-off last line of {path}: {exc.strerror or exc}") from None
    rows = []
    article = "an" if what[:1] in "aeiou" else "a"
    for lineno, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{lineno}: not {article} {what} line ({exc.msg}); is this {article} {what}s file?") from None
        missing = [k for k in required if not isinstance(row, dict) or k not in row]
        if missing:
            raise error(f"{path}:{lineno}: not {article} {what} line (no {missing[0]!r}); "
                        f"is this {article} {what}s file?")
        rows.append(row)
    return rows


class AppendLog:
    """An open JSONL file that rows are appended to, one flushed write each (see the module doc)."""

    def __init__(self, path, *, overwrite: bool = False, what: str = "row", error: Type[Exception] = ValueError):
        self.path = Path(path)
        self._what = what
        self._error = error
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if overwrite and self.path.exists():
                self.path.unlink()
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise error(f"cannot write {what}s to {self.path}: {exc.strerror or exc}") from None

    def append(self, row: dict) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            try:
                self._file.write(line)
                self._file.flush()
            except OSError as exc:
                raise self._error(f"cannot write {self._what}s to {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._file.closed:
                return
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                raise self._error(f"cannot write {self._what}s to {self.path}: {exc.strerror or exc}") from None
            finally:
                self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
