"""The three language-model agents, each one prompt and one JSON schema read from a versioned file in
eyecare/data/prompts/ (``<agent>.v<N>.json``; the highest version is used, or the files of ``--prompts
DIR``), asked through eyecare.endpoint (any OpenAI-compatible server, or a model in this process):

* report_normalizer: raw report -> {"findings", "impression"}
* qa_writer: findings + impression + labels -> {"questions": [{"question", "answer"}]}: open questions
  answerable from the findings. The report-generation item is the normalized report itself.
* verifier: source report + labels + one generated item -> {"verdict": supported | unsupported |
  contradicted, "reason"}. Only "supported" items are kept; the others are kept aside with the reason.

Answers are schema-valid JSON (structured output where the endpoint has it, else validation with
bounded retries). An answer that stays invalid is recorded as that stage's error, never dropped
silently: a normalizer or writer failure leaves the case with its rule-based items only, a verifier
failure rejects the item it was checking. An unreachable endpoint (EndpointError) propagates, so
the case is not recorded and a rerun retries it.

Only text is sent: the report, the labels and the generated items, never the images.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import DataError
from .rules import case_rng

SHIPPED = Path(__file__).resolve().parent / "prompts"
AGENTS = ("report_normalizer", "qa_writer", "verifier")
REPORT_TEMPLATES = ("Write the examination report for this {noun}.",
                    "Describe the findings of this {noun} and give your impression, as a report.")
ACCEPTED = "supported"


@dataclass(frozen=True)
class Prompt:
    agent: str
    version: int
    system: str
    user: str
    schema: dict
    source: str

    @property
    def tag(self) -> str:
        return f"{self.agent}.v{self.version}"

    def messages(self, **fields) -> list:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": self.user.format(**fields)}]


def _read_prompt(path: Path) -> Prompt:
    import jsonschema

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the prompt file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    problems = [k for k, t in (("agent", str), ("version", int), ("user", str), ("schema", dict))
                if not isinstance(data.get(k) if isinstance(data, dict) else None, t)]
    if problems:
        raise DataError(f"{path}: a prompt file needs 'agent' (text), 'version' (integer), 'user' (text) and "
                        f"'schema' (a JSON Schema object); missing or wrong: {', '.join(problems)}")
    if data["agent"] not in AGENTS:
        raise DataError(f"{path}: unknown agent {data['agent']!r}; the agents are {', '.join(AGENTS)}")
    try:
        jsonschema.validators.validator_for(data["schema"]).check_schema(data["schema"])
    except jsonschema.SchemaError as exc:
        raise DataError(f"{path}: 'schema' is not a valid JSON Schema ({exc.message})") from None
    return Prompt(agent=data["agent"], version=data["version"], system=str(data.get("system") or ""),
                  user=data["user"], schema=data["schema"], source=str(path))


def load_prompts(folder=None) -> dict:
    """agent -> Prompt, the highest version of each found in `folder` (default: the shipped ones)."""
    folder = Path(folder) if folder is not None else SHIPPED
    if not folder.is_dir():
        raise DataError(f"{folder}: no such prompt folder")
    best: dict = {}
    for path in sorted(folder.glob("*.json")):
        prompt = _read_prompt(path)
        if prompt.agent not in best or prompt.version > best[prompt.agent].version:
            best[prompt.agent] = prompt
    missing = [a for a in AGENTS if a not in best]
    if missing:
        raise DataError(f"{folder}: no prompt file for {', '.join(missing)} (expected <agent>.v<N>.json)")
    return best


def _labels_text(labels) -> str:
    return ", ".join(labels) if labels else "none given"


@dataclass
class AgentResult:
    items: list      # accepted items (dicts in build.py's item format, provenance filled in)
    rejected: list   # items the verifier did not accept, with its verdict and reason
    errors: list     # {"stage", "error"}: answers that never became schema-valid JSON


class Agents:
    """Runs the normalizer, writer and verifier for one case at a time (thread-safe: no shared state
    besides the endpoint)."""

    def __init__(self, endpoint, prompts: dict, *, seed: int = 0, open_per_case: int = 3, attempts: int = 3,
                 max_tokens: int = 512, temperature: float = 0.0):
        self.endpoint = endpoint
        self.prompts = prompts
        self.seed, self.open_per_case = seed, open_per_case
        self.attempts, self.max_tokens, self.temperature = attempts, max_tokens, temperature

    @property
    def versions(self) -> dict:
        return {agent: prompt.tag for agent, prompt in self.prompts.items()}

    def ask(self, agent: str, **fields):
        prompt = self.prompts[agent]
        return self.endpoint.chat_json(prompt.messages(**fields), prompt.schema, attempts=self.attempts,
                                       max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed)

    def run(self, case, taxonomy) -> AgentResult:
        result = AgentResult(items=[], rejected=[], errors=[])
        if not case.report:
            return result
        noun = taxonomy.image_noun
        model = self.endpoint.name
        normal = self.ask("report_normalizer", modality_noun=noun, report=case.report)
        if normal.error:
            result.errors.append({"stage": self.prompts["report_normalizer"].tag, "error": normal.error})
            return result
        findings, impression = normal.value["findings"].strip(), normal.value["impression"].strip()
        candidates = []
        written = self.ask("qa_writer", modality_noun=noun, findings=findings, impression=impression,
                           labels=_labels_text(case.labels), count=self.open_per_case)
        if written.error:
            result.errors.append({"stage": self.prompts["qa_writer"].tag, "error": written.error})
        else:
            for pair in written.value["questions"][: self.open_per_case]:
                candidates.append({"kind": "open", "task": "open", "question": _clean(pair["question"]),
                                   "answer": _clean(pair["answer"]), "options": [], "generator": "agent:qa_writer",
                                   "model": model, "prompt_version": self.prompts["qa_writer"].tag})
        rng = case_rng(self.seed, case.id, "report")
        candidates.append({"kind": "report", "task": "report", "question": rng.choice(REPORT_TEMPLATES).format(noun=noun),
                           "answer": f"Findings: {findings}\nImpression: {impression}", "options": [],
                           "generator": "agent:report_normalizer", "model": model,
                           "prompt_version": self.prompts["report_normalizer"].tag})
        for item in candidates:
            if not item["question"] or not item["answer"].replace("Findings:", "").replace("Impression:", "").strip():
                item["verdict"], item["reason"] = "empty", "the question or answer is empty once whitespace is removed"
                result.rejected.append(item)
                continue
            verdict = self.ask("verifier", modality_noun=noun, report=case.report, labels=_labels_text(case.labels),
                               task=item["task"], question=item["question"], answer=item["answer"])
            item["verifier"] = self.prompts["verifier"].tag
            if verdict.error:
                item["verdict"], item["reason"] = "no verdict", f"the verifier gave no valid verdict: {verdict.error}"
            else:
                item["verdict"], item["reason"] = verdict.value["verdict"], verdict.value["reason"].strip()
            (result.items if item["verdict"] == ACCEPTED else result.rejected).append(item)
        return result


def _clean(text: str) -> str:
    return re.sub(r"[ \t]+", " ", text).strip()
