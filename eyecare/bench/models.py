"""Which model a run scores: EyecareGPT, any model from a factory, or a built-in baseline.

The baselines are not models. They answer from fixed rules without looking at the images, so
they show the floor any real model must clear (what "always yes" scores on closed questions, what
fluent boilerplate scores on BLEU and ROUGE), and they let the whole flow be tried and tested
without weights.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Optional

from .data import MODALITIES, infer_modality
from .errors import ModelLoadError
from .extract import split_options

BUILTIN = ("echo", "baseline", "baseline:yes", "baseline:no")

_MODALITY_NAMES = {key: aliases[0] for key, aliases in MODALITIES.items()}
# A question that starts like this expects yes or no.
_YES_NO_QUESTION = re.compile(
    r"^(?:is|are|was|were|does|do|did|can|could|has|have|had|will|would|should|shall|may|might)\b",
    re.IGNORECASE)


class EchoModel:
    """Replies with the question it was asked: checks the plumbing, scores near zero."""

    name = "echo"

    def chat(self, question: str, images=None) -> str:
        return question


class BaselineModel:
    """A deterministic rule baseline (not a real model; it never looks at the images).

    Multiple choice: option A. Yes/no questions: always `yes_no`. Requests for a report: a
    normal-findings report naming the modality found in the question. Other open questions: a
    one-line normal-findings answer.
    """

    def __init__(self, yes_no: str = "yes"):
        if yes_no not in ("yes", "no"):
            raise ValueError("yes_no must be 'yes' or 'no'")
        self.yes_no = yes_no
        self.name = f"baseline:{yes_no}"

    def chat(self, question: str, images=None) -> str:
        if split_options(question)[1]:
            return "A"
        modality = _MODALITY_NAMES.get(infer_modality(question), "image")
        if re.search(r"\breport\b", question, re.IGNORECASE):
            return (f"The {modality} shows no definite abnormality. The optic disc and macula appear "
                    f"normal. Impression: no significant abnormality detected.")
        if _YES_NO_QUESTION.match(question.strip()):
            return self.yes_no.capitalize() + "."
        return f"No definite abnormality is seen on this {modality}."


def _builtin(spec: str):
    if spec == "echo":
        return EchoModel()
    return BaselineModel(spec.partition(":")[2] or "yes")


def _from_factory(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"--model-factory {spec!r}: expected module:callable, e.g. mypkg.models:load")
    # Like `python -m`, let a factory module in the current folder be found.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelLoadError(f"--model-factory {spec!r}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelLoadError(f"--model-factory {spec!r}: {module_name} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelLoadError(f"--model-factory {spec!r}: {attr} is not callable")
    try:
        return target()
    except Exception as exc:
        raise ModelLoadError(f"--model-factory {spec!r}: calling {attr}() failed ({type(exc).__name__}: {exc})") from None


def _eyecare_class():
    """eyecare.EyecareGPT, imported only when asked for so the bench works without the C core."""
    try:
        from eyecare import EyecareGPT
    except ImportError as exc:
        return None, exc
    return EyecareGPT, None


def model_name(model: Optional[str] = None, factory: Optional[str] = None) -> str:
    """The name load_model gives, without loading anything (a Ray driver names the run its workers load)."""
    if factory:
        return factory
    if model in BUILTIN:
        return _builtin(model).name
    return Path(model).resolve().name if model else "bench"


def load_model(model: Optional[str] = None, factory: Optional[str] = None):
    """Return (model, name) for `--model` (a checkpoint folder or a built-in baseline) or `--model-factory`."""
    if model and factory:
        raise ModelLoadError("give --model or --model-factory, not both")
    if factory:
        loaded = _from_factory(factory)
        name = factory
    elif model in BUILTIN:
        loaded = _builtin(model)
        name = loaded.name
    elif model:
        folder = Path(model)
        if not folder.is_dir():
            raise ModelLoadError(f"--model {model!r} is neither a checkpoint folder nor a built-in baseline "
                                 f"({', '.join(BUILTIN)})")
        cls, exc = _eyecare_class()
        if cls is None:
            raise ModelLoadError(f"--model {model}: eyecare.EyecareGPT is not available ({exc}); "
                                 "use --model-factory module:callable for another model")
        try:
            loaded = cls.from_pretrained(str(folder))
        except Exception as exc:
            raise ModelLoadError(f"--model {model}: cannot load the checkpoint ({type(exc).__name__}: {exc})") from None
        name = folder.resolve().name
    else:
        cls, _ = _eyecare_class()
        if cls is None:
            raise ModelLoadError("no model given and eyecare.EyecareGPT is not available: pass --model DIR, "
                                 "--model-factory module:callable, or --model baseline:yes to try the harness")
        raise ModelLoadError("no model given: pass --model DIR (an EyecareGPT checkpoint folder), "
                             "--model-factory module:callable, or --model baseline:yes to try the harness")
    if not callable(getattr(loaded, "chat", None)):
        raise ModelLoadError(f"model {name!r} ({type(loaded).__name__}) has no chat(question, images=...) method")
    return loaded, name
