"""`eyecare bench judge`: LLM-judge scores for the open QA and report records of a run.

A judge (any OpenAI-compatible endpoint, or ``local:DIR``, an EyecareGPT checkpoint in this process)
grades each prediction against its reference with a rubric: named dimensions on a 1-5 scale, a
prompt, and the JSON schema of the answer (eyecare/bench/rubrics/*.json, versioned; ``--rubric
FILE`` replaces the one for its task). The JSON is asked for with the schema (structured output where
the endpoint has it), validated, asked again a bounded number of times, and otherwise recorded as a
failure with its reason; nothing is silently dropped.

Persistence, like `bench run`: RUN_DIR/judgments.jsonl gets one line per judgment, appended and
flushed as it arrives, keyed by (record id, hash of the prediction, rubric name and version, judge
model). A rerun asks only for the keys without a successful judgment (failures are asked again), so
a kill loses at most the calls in flight, and a changed prediction, rubric or judge is judged anew.
The report (report.md/csv/json, charts, `bench compare`) then shows the mean of each dimension per
task and modality, with the number judged and the number that failed.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from statistics import fmean
from typing import Callable, Optional, Sequence

from ..jsonl import AppendLog, read_rows
from .errors import BenchError, OutputError

JUDGMENTS = "judgments.jsonl"
RUBRIC_FORMAT = "eyecare-judge-rubric/1"
DEFAULT_RUBRICS = {"open": "open_qa-v1.json", "report": "report-v1.json"}
TASK_TITLES = {"open": "Open QA", "report": "Report generation"}


class RubricError(BenchError):
    """A rubric file that cannot be used."""


@dataclass(frozen=True)
class Rubric:
    name: str
    version: str
    task: str
    dimensions: tuple        # ((name, description), ...)
    scale_min: int
    scale_max: int
    anchors: dict
    system: str
    prompt: str
    schema: dict
    path: str

    @property
    def id(self) -> str:
        return f"{self.name}/{self.version}"

    def messages(self, row: dict) -> list:
        """The judge's conversation for one prediction row."""
        dims = "\n".join(f"- {name}: {text}" for name, text in self.dimensions)
        anchors = "; ".join(f"{k} = {v}" for k, v in sorted(self.anchors.items()))
        keys = json.dumps({"rationale": "...", **{name: self.scale_min for name, _ in self.dimensions}})
        fields = {"task_title": TASK_TITLES.get(self.task, self.task), "modality": row.get("modality") or "unknown",
                  "question": row.get("prompt") or "", "reference": row.get("answer") or "",
                  "prediction": row.get("prediction") or "(no answer)", "dimensions": dims,
                  "scale_min": self.scale_min, "scale_max": self.scale_max, "scale_anchors": anchors,
                  "json_keys": keys}
        text = self.prompt
        for key, value in fields.items():  # plain replacement: the texts may hold braces
            text = text.replace("{" + key + "}", str(value))
        return [{"role": "system", "content": self.system}, {"role": "user", "content": text}]


def load_rubric(path) -> Rubric:
    """Reads and checks a rubric file (RubricError names what is wrong)."""
    import jsonschema

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RubricError(f"{path}: no such rubric file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RubricError(f"{path}: cannot read the rubric ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != RUBRIC_FORMAT:
        raise RubricError(f"{path}: not a judge rubric (\"format\": \"{RUBRIC_FORMAT}\")")
    problems = []
    for key, kind in (("name", str), ("version", str), ("task", str), ("system", str), ("prompt", str),
                      ("dimensions", list), ("scale", dict), ("schema", dict)):
        if not isinstance(data.get(key), kind):
            problems.append(f"{key} must be a {kind.__name__}")
    if problems:
        raise RubricError(f"{path}: " + "; ".join(problems))
    if data["task"] not in DEFAULT_RUBRICS:
        raise RubricError(f"{path}: task must be one of {', '.join(DEFAULT_RUBRICS)}, not {data['task']!r}")
    dims = []
    for d in data["dimensions"]:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not isinstance(d.get("description"), str):
            raise RubricError(f"{path}: each dimension needs a name and a description")
        dims.append((d["name"], d["description"]))
    if not dims or len({n for n, _ in dims}) != len(dims) or "rationale" in {n for n, _ in dims}:
        raise RubricError(f"{path}: the dimensions must be one or more distinct names (not 'rationale')")
    scale = data["scale"]
    low, high = scale.get("min"), scale.get("max")
    if not (isinstance(low, int) and isinstance(high, int) and low < high):
        raise RubricError(f"{path}: scale needs integer min < max")
    try:
        jsonschema.validators.validator_for(data["schema"]).check_schema(data["schema"])
    except jsonschema.SchemaError as exc:
        raise RubricError(f"{path}: the schema is not a valid JSON Schema: {exc.message}") from None
    required = set(data["schema"].get("required") or ())
    missing = [n for n, _ in dims if n not in required]
    if missing:
        raise RubricError(f"{path}: the schema must require every dimension (missing {', '.join(missing)})")
    return Rubric(name=data["name"], version=data["version"], task=data["task"], dimensions=tuple(dims),
                  scale_min=low, scale_max=high, anchors=dict(scale.get("anchors") or {}), system=data["system"],
                  prompt=data["prompt"], schema=data["schema"], path=str(path))


def default_rubrics() -> dict:
    """The shipped rubric of each task."""
    folder = resources.files("eyecare.bench") / "rubrics"
    return {task: load_rubric(Path(str(folder / name))) for task, name in DEFAULT_RUBRICS.items()}


def rubrics_with(files: Sequence = ()) -> dict:
    """The shipped rubrics, each replaced by a --rubric file for its task."""
    rubrics = default_rubrics()
    for f in files or ():
        rubric = load_rubric(f)
        rubrics[rubric.task] = rubric
    return rubrics


def prediction_hash(text: str) -> str:
    return hashlib.sha256((text or "").encode("utf-8")).hexdigest()[:16]


def judgment_key(record_id, prediction: str, rubric_id: str, judge: str) -> tuple:
    return (str(record_id), prediction_hash(prediction), rubric_id, judge)


def _row_key(row: dict) -> tuple:
    return (str(row["id"]), row.get("prediction_sha"), row.get("rubric"), row.get("judge"))


def read_judgments(path, repair: bool = False) -> list:
    return read_rows(path, repair=repair, what="judgment", required=("id", "rubric", "judge"), error=OutputError)


@dataclass
class JudgeResult:
    path: Path
    total: int       # predictions this rubric set applies to
    done: int        # already judged before this run
    asked: int       # judged now (successes + failures)
    failed: int      # of those, failures (recorded, asked again on the next run)


def judge_one(endpoint, rubric: Rubric, row: dict, judge: str, *, attempts: int = 3,
              max_tokens: int = 1024) -> dict:
    """One judgment line: the endpoint's scores of one prediction, or the reason it has none."""
    from ..endpoint import EndpointError

    start = time.perf_counter()
    try:
        reply = endpoint.chat_json(rubric.messages(row), rubric.schema, attempts=attempts, max_tokens=max_tokens)
        value, error, raw, tries = reply.value, reply.error, reply.text, reply.attempts
    except EndpointError as exc:  # the endpoint stayed unreachable or refused: a recorded failure
        value, error, raw, tries = None, f"endpoint: {exc}", "", 0
    scores = None if value is None else {name: value[name] for name, _ in rubric.dimensions}
    return {"id": row["id"], "task": row["task"], "modality": row.get("modality"),
            "prediction_sha": prediction_hash(row.get("prediction") or ""), "rubric": rubric.id,
            "judge": judge, "scores": scores,
            "rationale": value.get("rationale") if isinstance(value, dict) else None,
            "error": error, "raw": None if error is None else raw[:2000], "attempts": tries,
            "latency_ms": round((time.perf_counter() - start) * 1000.0, 3)}


def failed_judgment(row: dict, rubric: Rubric, judge: str, error: str) -> dict:
    """The line of a judgment that never came back (its judge process died): asked again on a rerun."""
    return {"id": row["id"], "task": row["task"], "modality": row.get("modality"),
            "prediction_sha": prediction_hash(row.get("prediction") or ""), "rubric": rubric.id, "judge": judge,
            "scores": None, "rationale": None, "error": error, "raw": None, "attempts": 0, "latency_ms": 0.0}


def judge_run(predictions: Sequence[dict], endpoint, judgments_path, rubrics: dict, *, concurrency: int = 1,
              attempts: int = 3, max_tokens: int = 1024, progress: bool = True, judge: Optional[str] = None,
              dispatch: Optional[Callable] = None) -> JudgeResult:
    """Judges every open QA / report prediction that has no successful judgment in `judgments_path`.

    `dispatch(todo, done)`, when given, is what asks instead of `endpoint` on `concurrency` threads (the Ray
    actors of `bench judge --ray`): it yields the judgment lines, in any order, and shows its own progress;
    this function stays the only writer. `judge` is the judge model's name (default: endpoint.name)."""
    from tqdm.auto import tqdm

    from ..endpoint import parallel

    judge = judge or endpoint.name
    rows = [r for r in predictions if r.get("task") in rubrics]
    path = Path(judgments_path)
    log = AppendLog(path, what="judgment", error=OutputError)
    failed = 0
    try:
        succeeded = {_row_key(j) for j in read_judgments(path, repair=True) if j.get("scores") is not None}
        todo = [r for r in rows
                if judgment_key(r["id"], r.get("prediction") or "", rubrics[r["task"]].id, judge) not in succeeded]
        done = len(rows) - len(todo)

        def in_process(todo):
            ask = lambda row: judge_one(endpoint, rubrics[row["task"]], row, judge, attempts=attempts,  # noqa: E731
                                        max_tokens=max_tokens)
            for _, result, exc in parallel(ask, todo, concurrency=concurrency):
                if exc is not None:  # a bug, not the endpoint: stop, keeping what is written
                    raise exc
                yield result

        with tqdm(total=len(rows), initial=done, unit="call", desc=f"judge {judge}",
                  disable=not progress or dispatch is not None, file=sys.stderr, dynamic_ncols=True) as bar:
            for result in (dispatch(todo, done) if dispatch is not None else in_process(todo)):
                log.append(result)
                failed += result["scores"] is None
                bar.update(1)
                bar.set_postfix(failed=failed)
    finally:
        log.close()
    return JudgeResult(path=path, total=len(rows), done=done, asked=len(todo), failed=failed)


def summarize(judgments: Sequence[dict], predictions: Sequence[dict]) -> list:
    """Per judge and rubric set: the mean of each dimension per task and modality (and per task over all
    modalities), n judged and n failed. Only judgments of the predictions as they are now count; of
    several lines for one key, the last one does."""
    current = {(str(p["id"]), prediction_hash(p.get("prediction") or "")): p for p in predictions}
    latest = {}
    for j in judgments:
        if (str(j["id"]), j.get("prediction_sha")) in current:
            latest[_row_key(j)] = j
    by_judge: dict = {}
    for j in latest.values():
        by_judge.setdefault(j["judge"], []).append(j)
    sections = []
    for judge, rows in sorted(by_judge.items()):
        rubric_ids = {}
        for j in rows:
            rubric_ids.setdefault(j.get("task"), set()).add(j["rubric"])
        cells, overall = [], {}
        for task in ("open", "report"):
            task_rows = [j for j in rows if j.get("task") == task]
            if not task_rows:
                continue
            dims = sorted({d for j in task_rows for d in (j.get("scores") or {})})
            overall[task] = _cell(task_rows, dims)
            for modality in sorted({j.get("modality") or "unknown" for j in task_rows}):
                group = [j for j in task_rows if (j.get("modality") or "unknown") == modality]
                cells.append({"task": task, "modality": modality, **_cell(group, dims)})
        sections.append({"judge": judge, "rubrics": {t: sorted(v) for t, v in rubric_ids.items()},
                         "overall": overall, "cells": cells})
    return sections


def _cell(rows: Sequence[dict], dims: Sequence[str]) -> dict:
    ok = [j for j in rows if j.get("scores") is not None]
    means = {}
    for d in dims:
        values = [j["scores"][d] for j in ok if isinstance(j["scores"].get(d), (int, float))]
        means[d] = fmean(values) if values else None
    return {"n_judged": len(ok), "n_failed": len(rows) - len(ok), "scores": means}


def open_judge(target: str, *, judge_model: Optional[str] = None, api_key_env: Optional[str] = "OPENAI_API_KEY",
               retries: int = 5, timeout: float = 300.0):
    """The endpoint for --judge: an http(s) URL (remote hosts allowed: the paper's judge is GPT-4) or local:DIR."""
    from ..endpoint import open_endpoint

    try:
        if target.startswith("local:"):
            return open_endpoint(target)
        return open_endpoint(target, model=judge_model, api_key_env=api_key_env, allow_remote=True,
                             max_retries=retries, timeout=timeout)
    except ValueError as exc:
        raise BenchError(f"--judge: {exc}") from None
