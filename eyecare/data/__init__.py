"""The data engine: a clinic's images, category labels and free-text reports -> Eyecare-100K-style visual
instruction data (closed QA, open QA, report generation), as LLaVA conversation JSON and bench JSONL.

    eyecare data validate manifest.csv
    eyecare data build manifest.csv --out data/                                  # rules only
    eyecare data build manifest.csv --out data/ --agents http://127.0.0.1:8000/v1  # + LLM agents

From Python::

    from eyecare.data import build, load_taxonomies, Agents, load_prompts
    from eyecare.endpoint import open_endpoint
    agents = Agents(open_endpoint("local:checkpoints/eyecaregpt-3.8b"), load_prompts())
    result = build("manifest.csv", "data/", taxonomies=load_taxonomies(), agents=agents)

See docs/data.md for the stages, the manifest format and the outputs.
"""
from .agents import Agents, load_prompts
from .build import BuildResult, build
from .dedup import deduplicate
from .errors import DataError
from .manifest import Case, Manifest, load_manifest
from .rules import rule_items
from .split import patients_for_test
from .taxonomy import Taxonomy, load_taxonomies

__all__ = ["Agents", "load_prompts", "BuildResult", "build", "deduplicate", "DataError", "Case", "Manifest",
           "load_manifest", "rule_items", "patients_for_test", "Taxonomy", "load_taxonomies"]
