"""The benchmark runner: ask the model every record, append each prediction as it is made.

The predictions JSONL is the run's only state. Each completed record is one line, written in a
single write() and flushed, so a run killed at any moment leaves every finished record on disk
and at most one partial last line. Restarted with the same output path, the runner drops that
partial line, skips the ids already present and continues in dataset order: no record is lost
and none is written twice.

The model is any object with `chat(question, images=[absolute paths]) -> str`. If it also has
`generate(requests) -> list[str]`, with requests a list of {"question": str, "images": [paths]},
records are sent to it `batch_size` at a time. If a model has a `timings` dict after a call
(e.g. {"decode_tokens_per_s": ..., "total_ms": ...}) it is stored with the prediction; wall-clock
latency is always measured here.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..jsonl import AppendLog, read_rows
from .data import Record
from .errors import OutputError


@dataclass
class RunResult:
    path: Path        # the predictions file
    total: int        # records in this run's selection
    resumed: int      # of those, already in the file when the run started
    completed: int    # newly predicted by this run
    errors: int       # of the new ones, how many raised inside the model


def read_predictions(path, repair: bool = False) -> list:
    """Read a predictions file. A last line without its newline is a write cut short by a kill:
    it is ignored, and with `repair` removed from the file so appending can continue cleanly."""
    return read_rows(path, repair=repair, what="prediction", error=OutputError)


def _check_resumable(rows: list, records: Sequence[Record], model_name: Optional[str], path: Path) -> None:
    """Refuse to mix predictions of another model or of an edited dataset into one file."""
    by_id = {r.id: r for r in records}
    hint = "use another --output, or --overwrite to start over"
    for row in rows:
        if model_name is not None and row.get("model") not in (None, model_name):
            raise OutputError(f"{path} holds predictions of model {row.get('model')!r}, not {model_name!r}; {hint}")
        record = by_id.get(row["id"])
        if record is not None and (row.get("prompt") != record.prompt or row.get("answer") != record.answer):
            raise OutputError(f"{path}: the prediction for {record.id!r} was made for a different question "
                              f"or answer than {record.where} now has; {hint}")


def _text_of(output) -> str:
    """Accept a str, or a dict / object carrying `text`, from models that return richer results."""
    if isinstance(output, str):
        return output
    if isinstance(output, dict) and isinstance(output.get("text"), str):
        return output["text"]
    text = getattr(output, "text", None)
    if isinstance(text, str):
        return text
    raise TypeError(f"model returned {type(output).__name__}, expected a string")


def _timings_of(model) -> Optional[dict]:
    """A JSON-safe copy of the model's `timings` dict, if it has one."""
    timings = getattr(model, "timings", None)
    if not isinstance(timings, dict):
        return None
    out = {}
    for key, value in timings.items():
        if isinstance(value, (bool, str)) or value is None:
            out[str(key)] = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            out[str(key)] = number if math.isfinite(number) else None
    return out


def _ask_one(model, record: Record):
    start = time.perf_counter()
    try:
        text, error = _text_of(model.chat(record.prompt, images=list(record.images))), None
    except Exception as exc:  # one bad record must not end the run; the error is kept with it
        text, error = "", f"{type(exc).__name__}: {exc}"
    latency_ms = (time.perf_counter() - start) * 1000.0
    return text, error, latency_ms, _timings_of(model) if error is None else None


def _ask_batch(model, batch: Sequence[Record]) -> list:
    start = time.perf_counter()
    try:
        outputs = [_text_of(o) for o in model.generate(
            [{"question": r.prompt, "images": list(r.images)} for r in batch])]
        if len(outputs) != len(batch):
            raise ValueError(f"generate returned {len(outputs)} results for {len(batch)} requests")
    except Exception:
        # Ask one by one so the error is pinned on the record that causes it.
        return [_ask_one(model, r) for r in batch]
    per_record_ms = (time.perf_counter() - start) * 1000.0 / len(batch)
    timings = _timings_of(model)
    return [(text, None, per_record_ms, timings) for text in outputs]


def _row(record: Record, model_name, text, error, latency_ms, timings, batch_size) -> dict:
    return {
        "id": record.id, "task": record.task, "modality": record.modality,
        "prompt": record.prompt, "images": list(record.image_refs), "options": list(record.options),
        "answer": record.answer, "prediction": text, "error": error,
        "latency_ms": round(latency_ms, 3), "batch_size": batch_size, "timings": timings,
        "model": model_name,
    }


def write_predictions(records: Sequence[Record], predictions_path, answer, *, model_name: Optional[str] = None,
                      overwrite: bool = False) -> RunResult:
    """The one writer of a predictions file, shared by local runs (`run`) and Ray runs (`ray_runner`).

    Opens `predictions_path` for appending (repairing a cut-off last line), refuses a file of another model or
    dataset version, then calls `answer(pending, resumed)` with the records not yet in the file (in dataset order)
    and how many are done. `answer` is a generator yielding `(record, (text, error, latency_ms, timings),
    batch_size)` as answers come, in any order; each one is appended and flushed at once, so an interrupted
    run keeps every answer already yielded. A second answer for a record already written is dropped, so the
    file holds exactly one line per record whatever the caller retries.
    """
    path = Path(predictions_path)
    out = AppendLog(path, overwrite=overwrite, what="prediction", error=OutputError)
    errors = completed = 0
    try:
        rows = read_predictions(path, repair=True)
        _check_resumable(rows, records, model_name, path)
        done = {row["id"] for row in rows}
        pending = [r for r in records if r.id not in done]
        resumed = len(records) - len(pending)
        wanted = {r.id for r in pending}
        for record, (text, error, ms, timings), batch_size in answer(pending, resumed):
            if record.id not in wanted:
                continue
            wanted.discard(record.id)
            out.append(_row(record, model_name, text, error, ms, timings, batch_size))
            errors += error is not None
            completed += 1
    finally:
        out.close()
    return RunResult(path=path, total=len(records), resumed=resumed, completed=completed, errors=errors)


def run(records: Sequence[Record], model, predictions_path, *, model_name: Optional[str] = None,
        batch_size: int = 1, progress: bool = True, overwrite: bool = False) -> RunResult:
    """Predict every record not yet in `predictions_path`, in order, appending one line each.

    Safe to interrupt and call again with the same arguments: it resumes after the last
    completed record. Raises OutputError before asking the model anything if the path cannot be
    written or already holds predictions of another model or another version of the dataset.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")

    def answer(pending, resumed):
        from tqdm.auto import tqdm  # core dependency; imported here to keep `import eyecare.bench` light

        # Without generate() a batch would only delay the writes, so chat models go one by one and
        # a kill loses at most the record in flight.
        step = batch_size if batch_size > 1 and callable(getattr(model, "generate", None)) else 1
        errors = 0
        with tqdm(total=resumed + len(pending), initial=resumed, unit="rec", desc=model_name or "bench",
                  disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
            for start in range(0, len(pending), step):
                batch = pending[start:start + step]
                results = ask(model, batch, step)
                for record, result in zip(batch, results):
                    yield record, result, len(batch)
                    errors += result[1] is not None
                bar.update(len(batch))
                if errors:
                    bar.set_postfix(errors=errors)

    return write_predictions(records, predictions_path, answer, model_name=model_name, overwrite=overwrite)


def ask(model, batch: Sequence[Record], step: int) -> list:
    """(text, error, latency_ms, timings) for each record of `batch`: through generate() when `step` > 1 (the
    model has one), else chat(). Used by local runs and by each Ray worker."""
    return _ask_batch(model, batch) if step > 1 else [_ask_one(model, r) for r in batch]
