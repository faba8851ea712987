"""Label taxonomies: for each modality the category names a clinic's labels may use, with their synonyms.

One JSON file per modality (the eight shipped in eyecare/data/taxonomies/ can be replaced with
``--taxonomy FILE_OR_DIR``)::

    {"modality": "oct", "image_noun": "OCT scan",
     "categories": [{"name": "macular hole", "synonyms": ["full thickness macular hole", "FTMH"]}, ...]}

A label is matched to a category by its name or any synonym, ignoring case, punctuation and spacing,
so "FTMH", "Macular-hole" and "macular hole" are one category. No spelling may belong to two
categories of one modality: the multiple-choice rule relies on that to never offer a synonym of the
answer as a distractor.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..bench.data import MODALITIES, normalize_modality
from .errors import DataError

SHIPPED = Path(__file__).resolve().parent / "taxonomies"


def spelling_key(text: str) -> str:
    """What two spellings of a label must share to be the same label: lower-case words, nothing else."""
    return " ".join(re.findall(r"[a-z0-9]+", str(text).lower()))


@dataclass(frozen=True)
class Taxonomy:
    modality: str
    image_noun: str          # how questions name the image ("OCT scan")
    categories: tuple        # canonical names, in file order
    synonyms: dict           # canonical name -> tuple of synonyms
    source: str              # the file it was read from
    index: dict              # spelling_key of every name and synonym -> canonical name

    def canonical(self, label: str) -> Optional[str]:
        """The category a label names (by name or synonym), or None."""
        return self.index.get(spelling_key(label))


def _parse(data, source: str) -> Taxonomy:
    if not isinstance(data, dict):
        raise DataError(f"{source}: a taxonomy must be a JSON object with 'modality' and 'categories'")
    modality = normalize_modality(str(data.get("modality", "")))
    if modality is None:
        raise DataError(f"{source}: 'modality' must be one of {', '.join(MODALITIES)} "
                        f"(got {json.dumps(data.get('modality'))})")
    categories = data.get("categories")
    if not isinstance(categories, list) or len(categories) < 2:
        raise DataError(f"{source}: 'categories' must list at least two categories")
    names, synonyms, owner = [], {}, {}
    for i, cat in enumerate(categories):
        name = cat.get("name") if isinstance(cat, dict) else None
        syns = cat.get("synonyms", []) if isinstance(cat, dict) else None
        if not isinstance(name, str) or not spelling_key(name):
            raise DataError(f"{source}: categories[{i}] needs a non-empty 'name'")
        if not isinstance(syns, list) or not all(isinstance(s, str) and spelling_key(s) for s in syns):
            raise DataError(f"{source}: categories[{i}] ({name}): 'synonyms' must be a list of non-empty strings")
        for spelling in [name] + syns:
            key = spelling_key(spelling)
            if key in owner and owner[key] != name:
                raise DataError(f"{source}: {spelling!r} names both {owner[key]!r} and {name!r}; "
                                "a spelling may belong to one category only")
            owner[key] = name
        names.append(name)
        synonyms[name] = tuple(syns)
    noun = data.get("image_noun") or modality.replace("_", " ") + " image"
    return Taxonomy(modality=modality, image_noun=str(noun), categories=tuple(names), synonyms=synonyms,
                    source=source, index=owner)


def read_taxonomy(path) -> Taxonomy:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such taxonomy file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the taxonomy ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    return _parse(data, str(path))


def load_taxonomies(overrides: Iterable = ()) -> dict:
    """modality -> Taxonomy: the shipped ones, each replaced by the file for its modality among
    `overrides` (files, or folders whose *.json files are all read)."""
    taxonomies = {t.modality: t for t in (read_taxonomy(p) for p in sorted(SHIPPED.glob("*.json")))}
    for given in overrides:
        given = Path(given)
        files = sorted(given.glob("*.json")) if given.is_dir() else [given]
        if given.is_dir() and not files:
            raise DataError(f"{given}: the folder holds no taxonomy (*.json) file")
        for file in files:
            taxonomy = read_taxonomy(file)
            taxonomies[taxonomy.modality] = taxonomy
    return taxonomies
