"""The manifest: one case a row, in CSV or JSONL.

Columns (CSV header names or JSONL keys; case and spacing of the names do not matter):

    image       image path(s), relative to the manifest's folder (or --image-root) or absolute;
                several separated by ';' in CSV, or a JSON list ("images" is accepted too)   required
    modality    one of the bench's eight keys or an alias ("OCT", "fundus photography", ...)   required
    labels      category labels, ';'-separated in CSV or a JSON list; each must be a name or a
                synonym in that modality's taxonomy. Labels list every category present.      optional
    report      the free-text examination report                                               optional
    patient_id  who the images belong to; the train/test split keeps a patient on one side     optional
    eye         OD/OS/OU, right/left/both                                                      optional
    id          the case id (default: "line<N>")                                              optional

Every bad row is reported with its line number and skipped; the other rows go on. With
``check_images`` each image is read, hashed (SHA-1, for duplicate detection) and decoded with the
same decoder the model uses, so a row whose image the model could not read is reported here.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..bench.data import MODALITIES, normalize_modality
from ..jsonl import parse_lines
from .errors import DataError

_COLUMNS = {"id": "id", "case_id": "id", "case": "id",
            "image": "image", "images": "image", "image_path": "image", "image_paths": "image",
            "modality": "modality",
            "labels": "labels", "label": "labels",
            "report": "report",
            "patient_id": "patient", "patient": "patient",
            "eye": "eye", "laterality": "eye"}
_EYES = {"od": "right", "right": "right", "r": "right", "re": "right",
         "os": "left", "left": "left", "l": "left", "le": "left",
         "ou": "both", "both": "both", "bilateral": "both"}


@dataclass(frozen=True)
class Case:
    """One valid manifest row. `images` are absolute paths, `image_refs` as written, `digests` the
    SHA-1 of each image's bytes (empty when images were not checked)."""

    id: str
    line: int
    modality: str
    images: tuple
    image_refs: tuple
    labels: tuple = ()          # canonical category names, in the order given
    report: str = ""
    patient: Optional[str] = None
    eye: Optional[str] = None
    digests: tuple = ()

    @property
    def patient_key(self) -> str:
        """The split's unit: the patient, or the case itself when the manifest names no patient."""
        return f"patient:{self.patient}" if self.patient else f"case:{self.id}"

    def fingerprint(self) -> str:
        """Changes whenever anything generation reads from the row changes."""
        body = json.dumps([self.id, self.modality, self.image_refs, self.labels, self.report, self.patient,
                           self.eye, self.digests])
        return hashlib.sha1(body.encode("utf-8")).hexdigest()[:16]


@dataclass
class Manifest:
    path: Path
    cases: list
    problems: list = field(default_factory=list)   # (line, message) of every skipped row

    def problem_lines(self) -> list:
        return [f"{self.path.name}:{line}: {message}" for line, message in self.problems]


def _cell_list(value) -> Optional[list]:
    """A ';'-separated cell or a JSON list as a list of stripped non-empty strings (None if neither)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(";") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    return None


def _text(value) -> Optional[str]:
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value.strip() if isinstance(value, str) else None


class _ImageChecker:
    """Reads each distinct image once: its SHA-1, and whether the model's decoder accepts it."""

    def __init__(self):
        self._seen: dict = {}

    def __call__(self, path: str):
        if path not in self._seen:
            self._seen[path] = self._check(path)
        return self._seen[path]

    @staticmethod
    def _check(path: str):
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return None, "no such file"
        except OSError as exc:
            return None, f"cannot read it ({exc.strerror or exc})"
        from .. import _core

        try:
            _core.decode_image(data)
        except (ValueError, OSError, _core.EyecareError) as exc:
            return None, f"not an image the model can read ({str(exc).splitlines()[0] if str(exc) else exc})"
        return hashlib.sha1(data).hexdigest(), None


def _rows(path: Path):
    """Yield (line, dict of canonical column -> raw value) or (line, error message) per row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: no such manifest") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the manifest ({exc})") from None
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for lineno, obj, error in parse_lines(text):
            if error:
                yield lineno, f"not JSON ({error})"
                continue
            if not isinstance(obj, dict):
                yield lineno, "must be a JSON object"
                continue
            yield lineno, {_COLUMNS[k]: v for k, v in ((str(k).strip().lower(), v) for k, v in obj.items())
                           if k in _COLUMNS}
        return
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: the manifest is empty (expected a CSV header line)") from None
    except csv.Error as exc:
        raise DataError(f"{path}:1: not a CSV header ({exc})") from None
    names = [_COLUMNS.get(h.strip().lower().replace(" ", "_")) for h in header]
    missing = [c for c in ("image", "modality") if c not in names]
    if missing:
        raise DataError(f"{path}:1: the header has no {' and no '.join(repr(m) for m in missing)} column "
                        f"(it has {', '.join(repr(h) for h in header)}); see docs/data.md")
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, f"not valid CSV ({exc})"
            start = reader.line_num + 1
            continue
        if any(cell.strip() for cell in row):
            if len(row) > len(header):
                yield start, f"has {len(row)} cells but the header names {len(header)} columns"
            else:
                yield start, {n: v for n, v in zip(names, row) if n is not None}
        start = reader.line_num + 1


def load_manifest(path, taxonomies: dict, *, image_root=None, check_images: bool = True) -> Manifest:
    """Read and check a manifest: every valid row as a Case, every bad one as (line, why)."""
    path = Path(path)
    base = Path(image_root) if image_root is not None else path.resolve().parent
    checker = _ImageChecker()
    manifest = Manifest(path=path, cases=[])
    seen_ids: dict = {}
    for lineno, row in _rows(path):
        if isinstance(row, str):
            manifest.problems.append((lineno, row))
            continue
        problems = []
        refs = _cell_list(row.get("image"))
        if not refs:
            problems.append("no image (column 'image')")
        raw_modality = row.get("modality")
        modality = normalize_modality(raw_modality) if isinstance(raw_modality, str) else None
        if modality is None:
            problems.append(f"modality {json.dumps(raw_modality)} is not one of {', '.join(MODALITIES)} "
                            "or an alias of one")
        labels = _cell_list(row.get("labels"))
        canonical = []
        if labels is None:
            problems.append("'labels' must be a ';'-separated string or a list of strings")
        elif modality is not None:
            taxonomy = taxonomies.get(modality)
            for label in labels:
                name = taxonomy.canonical(label) if taxonomy else None
                if name is None:
                    problems.append(f"label {label!r} is not in the {modality} taxonomy "
                                    f"({taxonomy.source if taxonomy else 'none loaded'}); add it there "
                                    "as a category or synonym, or pass --taxonomy")
                elif name not in canonical:
                    canonical.append(name)
        report, patient, eye_raw, case_id = (_text(row.get(k)) for k in ("report", "patient", "eye", "id"))
        for value, name in ((report, "report"), (patient, "patient_id"), (eye_raw, "eye"), (case_id, "id")):
            if value is None:
                problems.append(f"'{name}' must be text")
        eye = None
        if eye_raw:
            eye = _EYES.get(eye_raw.lower())
            if eye is None:
                problems.append(f"eye {eye_raw!r} is not OD, OS, OU, right, left or both")
        case_id = case_id or f"line{lineno}"
        if case_id in seen_ids:
            problems.append(f"id {case_id!r} was already used on line {seen_ids[case_id]}")
        images = tuple(str((base / r).resolve()) if not os.path.isabs(r) else r for r in (refs or []))
        digests = []
        if check_images and not problems:
            for ref, image in zip(refs, images):
                digest, why = checker(image)
                if why:
                    problems.append(f"image {ref}: {why}")
                digests.append(digest)
        if problems:
            manifest.problems.append((lineno, "; ".join(problems)))
            continue
        seen_ids[case_id] = lineno
        manifest.cases.append(Case(id=case_id, line=lineno, modality=modality, images=images,
                                   image_refs=tuple(refs), labels=tuple(canonical), report=report,
                                   patient=patient or None, eye=eye, digests=tuple(digests)))
    if not manifest.cases and not manifest.problems:
        raise DataError(f"{path}: the manifest has no rows")
    return manifest
