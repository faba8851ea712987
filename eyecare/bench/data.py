"""Benchmark records: loading, validation and selection.

Two input formats map to the same Record:

* our JSONL schema, one object per line::

    {"id": "oct-001", "images": ["img/oct-001.png"], "question": "Is there subretinal fluid?",
     "answer": "yes", "task": "closed", "modality": "oct", "options": ["...", "..."]}

  `images` are paths relative to the JSONL file (or absolute); `options` is optional and makes a
  closed question multiple choice, with `answer` a letter or one option's text.

* the LLaVA conversation format of instruction datasets such as Eyecare-100K: a JSON array (or
  JSONL) of {"id", "image": path or [paths], "conversations": [{"from": "human", "value": ...},
  {"from": "gpt", "value": ...}, ...]}. Each human turn and the gpt turn after it become one
  record (`id`, or `id#2`, `id#3`... for later turns, asked without the earlier turns). `task`,
  `modality` and `options` may be given as extra keys; otherwise the task is inferred from the
  answer (yes/no or an option: closed) and the question (mentions a report: report; else open),
  the modality from keywords in the image paths and question, and options from lettered lines in
  the question.

Problems are collected over the whole file and raised together as one DatasetError, each naming
the file, line (or array entry) and field, so a dataset can be fixed in one pass.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..jsonl import parse_lines
from .errors import DatasetError
from .extract import format_options, gold_answer, split_options

TASKS = ("closed", "open", "report")

# Canonical modality keys and the names they go by. Longer names are tried first when inferring a
# modality from text, so "fundus fluorescein angiography" is FFA, not fundus photography.
MODALITIES = {
    "fundus": ("fundus photography", "fundus photograph", "color fundus photograph", "colour fundus photograph",
               "fundus image", "fundus", "cfp", "retinal photograph"),
    "ffa": ("fundus fluorescein angiography", "fluorescein angiography", "ffa", "fa"),
    "icga": ("indocyanine green angiography", "icg angiography", "icga", "icg"),
    "oct": ("optical coherence tomography", "oct", "sd oct", "swept source oct"),
    "ubm": ("ultrasound biomicroscopy", "ultrasound bio microscopy", "ubm"),
    "slit_lamp": ("slit lamp photograph", "slit lamp photography", "slit lamp", "slitlamp",
                  "anterior segment photograph"),
    "fluorescein_staining": ("corneal fluorescein staining", "fluorescein staining", "fluorescein stain"),
    "ct": ("computed tomography", "orbital ct", "orbit ct", "ct"),
}
UNKNOWN_MODALITY = "unknown"

_TASK_ALIASES = {
    "closed": "closed", "close": "closed", "closed_qa": "closed", "closedqa": "closed",
    "closed_ended": "closed", "yes_no": "closed", "multiple_choice": "closed", "mcq": "closed",
    "choice": "closed",
    "open": "open", "open_qa": "open", "openqa": "open", "open_ended": "open",
    "report": "report", "report_generation": "report", "reportgeneration": "report",
    "report_gen": "report", "generation": "report",
}
_MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class Record:
    """One benchmark question.

    `images` are absolute paths (what the model receives); `image_refs` are the paths as written
    in the dataset, kept for messages and the predictions file. `where` locates the record in its
    file for error messages ("data.jsonl:12").
    """

    id: str
    task: str
    modality: str
    question: str
    answer: str
    images: tuple = ()
    options: tuple = ()
    image_refs: tuple = ()
    where: str = ""

    @property
    def prompt(self) -> str:
        """The text sent to the model: the question, plus its lettered options if not already in it."""
        if self.options and not split_options(self.question)[1]:
            return (f"{self.question}\n{format_options(self.options)}\n"
                    "Answer with the letter of the correct option.")
        return self.question

    @property
    def gold(self) -> Optional[str]:
        """Canonical answer of a closed question (option letter or yes/no); None for open and report."""
        return gold_answer(self.answer, self.options) if self.task == "closed" else None


def normalize_task(value: str) -> Optional[str]:
    key = re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_")
    return _TASK_ALIASES.get(key)


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def normalize_modality(value: str) -> Optional[str]:
    """Canonical modality key for a name or alias ("OCT", "Slit-lamp", "fundus photography")."""
    norm = _words(str(value))
    for key, aliases in MODALITIES.items():
        if norm == _words(key) or norm in (_words(a) for a in aliases):
            return key
    return None


def infer_modality(*texts: str) -> str:
    """Guess the modality from free text (image paths, the question) by its longest alias found."""
    padded = " " + " ".join(_words(t) for t in texts) + " "
    best, best_len = UNKNOWN_MODALITY, 0
    for key, aliases in MODALITIES.items():
        for alias in aliases:
            a = _words(alias)
            if len(a) > best_len and f" {a} " in padded:
                best, best_len = key, len(a)
    return best


def infer_task(question: str, answer: str, options: Sequence[str]) -> str:
    if gold_answer(answer, options) is not None:
        return "closed"
    if re.search(r"\breport\b", question, re.IGNORECASE):
        return "report"
    return "open"


class _Problems:
    """Collects validation problems so that all of them are reported at once."""

    def __init__(self, path: Path):
        self.path = path
        self.items: list[str] = []

    def add(self, where: str, field_name: Optional[str], message: str) -> None:
        prefix = f"{where}: field '{field_name}'" if field_name else where
        self.items.append(f"{prefix}: {message}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:_MAX_LISTED_PROBLEMS]
        more = len(self.items) - len(shown)
        tail = f"\n  ... and {more} more" if more else ""
        raise DatasetError(
            f"{self.path}: {len(self.items)} problem(s) in the dataset:\n  " + "\n  ".join(shown) + tail
        )


def _resolve_images(refs: Iterable[str], base: Path) -> tuple:
    return tuple(str((base / ref).resolve()) if not os.path.isabs(ref) else str(Path(ref)) for ref in refs)


def _string_list(value, where, name, problems) -> Optional[list]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        problems.add(where, name, f"must be a list of non-empty strings (got {json.dumps(value)[:80]})")
        return None
    return value


def _from_schema(obj: dict, where: str, base: Path, problems: _Problems) -> Optional[Record]:
    """Validate one object of our JSONL schema and build its Record."""
    before = len(problems.items)
    for name in ("id", "images", "question", "answer", "task", "modality"):
        if name not in obj:
            problems.add(where, name, "is missing")
    if len(problems.items) > before:
        return None
    rid = obj["id"]
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid).strip() == "":
        problems.add(where, "id", "must be a non-empty string or an integer")
    for name in ("question", "answer"):
        if not isinstance(obj[name], str) or not obj[name].strip():
            problems.add(where, name, "must be a non-empty string")
    images = _string_list(obj["images"], where, "images", problems)
    task = normalize_task(obj["task"]) if isinstance(obj["task"], str) else None
    if task is None:
        problems.add(where, "task", f"must be one of {', '.join(TASKS)} (got {json.dumps(obj['task'])})")
    modality = normalize_modality(obj["modality"]) if isinstance(obj["modality"], str) else None
    if modality is None:
        problems.add(where, "modality",
                     f"must be one of {', '.join(MODALITIES)} or an alias of one (got {json.dumps(obj['modality'])})")
    options: list = []
    if obj.get("options") is not None:
        options = _string_list(obj["options"], where, "options", problems) or []
        if options and not 2 <= len(options) <= 8:
            problems.add(where, "options", f"must list 2 to 8 options (got {len(options)})")
        if options and task != "closed":
            problems.add(where, "options", "only closed questions take options")
    if len(problems.items) > before:
        return None
    record = Record(id=str(rid), task=task, modality=modality, question=obj["question"].strip(),
                    answer=obj["answer"].strip(), images=_resolve_images(images, base),
                    options=tuple(o.strip() for o in options), image_refs=tuple(images), where=where)
    _check_gold(record, problems)
    return record


def _check_gold(record: Record, problems: _Problems) -> None:
    if record.task == "closed" and record.gold is None and len(record.options) <= 8:
        expected = (f"an option letter A-{'ABCDEFGH'[len(record.options) - 1]} or one option's text"
                    if record.options else "yes or no (or give `options` for a multiple-choice question)")
        problems.add(record.where, "answer", f"of a closed question must be {expected} (got {record.answer!r})")


_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "model": "gpt"}


def _from_llava(obj: dict, where: str, base: Path, problems: _Problems, index: int) -> list:
    """Map one LLaVA conversation entry to one Record per question/answer turn."""
    before = len(problems.items)
    image = obj.get("image", obj.get("images", []))
    refs = [image] if isinstance(image, str) else image
    refs = _string_list(refs, where, "image", problems) if refs != [] else []
    conversations = obj.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        problems.add(where, "conversations", "must be a non-empty list of {from, value} turns")
        return []
    turns = []
    for i, turn in enumerate(conversations):
        role = _ROLES.get(str(turn.get("from", "")).lower()) if isinstance(turn, dict) else None
        if role is None or not isinstance(turn.get("value"), str):
            problems.add(where, f"conversations[{i}]", "must be {\"from\": \"human\"|\"gpt\", \"value\": text}")
            continue
        turns.append((role, turn["value"]))
    if len(problems.items) > before:
        return []
    rid = str(obj.get("id", obj.get("question_id", f"entry-{index}")))
    task_given = obj.get("task")
    modality_given = obj.get("modality")
    records = []
    pairs = [(q, a) for (rq, q), (ra, a) in zip(turns, turns[1:]) if rq == "human" and ra == "gpt"]
    if not pairs:
        problems.add(where, "conversations", "has no human turn followed by a gpt turn")
        return []
    for k, (question, answer) in enumerate(pairs, start=1):
        # The <image> placeholder marks where LLaVA splices image tokens; the model under test
        # places images itself, so the bench passes plain text.
        question = re.sub(r"\s*<image>\s*", "\n", question).strip()
        answer = answer.strip()
        options = obj.get("options")
        if options is not None:
            options = _string_list(options, where, "options", problems) or []
            if options and not 2 <= len(options) <= 8:
                problems.add(where, "options", f"must list 2 to 8 options (got {len(options)})")
                return []
        else:
            options = split_options(question)[1]
        if task_given is not None:
            task = normalize_task(task_given)
            if task is None:
                problems.add(where, "task", f"must be one of {', '.join(TASKS)} (got {json.dumps(task_given)})")
                return []
        else:
            task = infer_task(question, answer, options)
        if task != "closed":
            options = []
        if modality_given is not None:
            modality = normalize_modality(str(modality_given))
            if modality is None:
                problems.add(where, "modality", f"must be one of {', '.join(MODALITIES)} (got {json.dumps(modality_given)})")
                return []
        else:
            modality = infer_modality(*refs, question)
        if not question or not answer:
            problems.add(where, f"conversations (turn {k})", "has an empty question or answer")
            continue
        record = Record(id=rid if len(pairs) == 1 else f"{rid}#{k}", task=task, modality=modality,
                        question=question, answer=answer, images=_resolve_images(refs, base),
                        options=tuple(options), image_refs=tuple(refs), where=where)
        _check_gold(record, problems)
        records.append(record)
    return records


_ARRAY_GAP = re.compile(r"[\s,]*")


def _array_entries(text: str):
    """Yield (line number, object) for each element of a JSON array, so errors can name the line."""
    decoder = json.JSONDecoder()
    pos, line = text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    while True:
        m = _ARRAY_GAP.match(text, pos)
        line += text.count("\n", pos, m.end())
        pos = m.end()
        if pos >= len(text) or text[pos] == "]":
            return
        obj, end = decoder.raw_decode(text, pos)
        yield line, obj
        line += text.count("\n", pos, end)
        pos = end


def _entries(path: Path, problems: _Problems):
    """Yield (where, index, object) for each entry of a JSON array or JSONL file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: dataset file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read dataset ({exc})") from None
    if text.lstrip().startswith("["):
        try:
            json.loads(text)  # a syntax error anywhere is reported with its line before any entry
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        for i, (lineno, obj) in enumerate(_array_entries(text)):
            yield f"{path.name}:{lineno}", i, obj
        return
    for lineno, obj, error in parse_lines(text):
        if error:
            problems.add(f"{path.name}:{lineno}", None, f"invalid JSON ({error})")
            continue
        yield f"{path.name}:{lineno}", lineno, obj


def load_dataset(path, image_root=None) -> list:
    """Load and validate a dataset file (our JSONL schema or LLaVA conversations) into Records.

    `image_root` overrides the folder that relative image paths are resolved against (default:
    the dataset file's folder). Raises DatasetError listing every problem found. Image files are
    not checked here; call check_images on the records you are going to run.
    """
    path = Path(path)
    base = Path(image_root) if image_root is not None else path.resolve().parent
    problems = _Problems(path)
    records: list = []
    for where, index, obj in _entries(path, problems):
        if not isinstance(obj, dict):
            problems.add(where, None, "must be a JSON object")
        elif "conversations" in obj or "image" in obj:  # LLaVA entries; ours say "images"
            records.extend(_from_llava(obj, where, base, problems, index))
        else:
            record = _from_schema(obj, where, base, problems)
            if record is not None:
                records.append(record)
    seen: dict = {}
    for record in records:
        if record.id in seen:
            problems.add(record.where, "id", f"duplicates id {record.id!r} of {seen[record.id]}")
        else:
            seen[record.id] = record.where
    if not records and not problems.items:
        problems.add(path.name, None, "contains no records")
    problems.raise_if_any()
    return records


def check_images(records: Sequence[Record]) -> list:
    """Return (record, image as written, absolute path) for every image file that does not exist."""
    return [(r, ref, p) for r in records for ref, p in zip(r.image_refs, r.images) if not os.path.isfile(p)]


def require_images(records: Sequence[Record]) -> None:
    """Raise a DatasetError listing the missing images, so a run fails before it starts, not midway."""
    missing = check_images(records)
    if not missing:
        return
    lines = [f"{r.where} (id {r.id}): {ref} -> {p}" for r, ref, p in missing[:_MAX_LISTED_PROBLEMS]]
    more = len(missing) - len(lines)
    tail = f"\n  ... and {more} more" if more else ""
    raise DatasetError(f"{len(missing)} image file(s) not found:\n  " + "\n  ".join(lines) + tail)


def _split_filter(values) -> Optional[list]:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def select(records: Sequence[Record], tasks=None, modalities=None, limit: Optional[int] = None) -> list:
    """Filter records by task and modality (names or aliases, lists or comma-separated), then keep the first `limit`."""
    wanted_tasks = _split_filter(tasks)
    if wanted_tasks is not None:
        canon = [normalize_task(t) for t in wanted_tasks]
        bad = [t for t, c in zip(wanted_tasks, canon) if c is None]
        if bad:
            raise DatasetError(f"unknown task(s) {', '.join(bad)}; choose from {', '.join(TASKS)}")
        wanted_tasks = set(canon)
    wanted_mods = _split_filter(modalities)
    if wanted_mods is not None:
        canon = [UNKNOWN_MODALITY if m == UNKNOWN_MODALITY else normalize_modality(m) for m in wanted_mods]
        bad = [m for m, c in zip(wanted_mods, canon) if c is None]
        if bad:
            raise DatasetError(f"unknown modality(ies) {', '.join(bad)}; choose from {', '.join(MODALITIES)}")
        wanted_mods = set(canon)
    out = [r for r in records
           if (wanted_tasks is None or r.task in wanted_tasks)
           and (wanted_mods is None or r.modality in wanted_mods)]
    if limit is not None:
        if limit < 0:
            raise DatasetError(f"--limit must be >= 0 (got {limit})")
        out = out[:limit]
    return out
