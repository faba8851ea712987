"""Sampling options, resolved as transformers' ``generate`` resolves them: what the call says, else the
checkpoint's ``generation_config.json``, else transformers' defaults (greedy; when sampling, temperature
1, top-k 50, top-p 1). The choice of each token is made by eyecare._core.sample (csrc/model/sampler.c): the
repetition penalty, then, when sampling, temperature, top-k, top-p and a draw from a NumPy generator
seeded with ``seed``, so that a seeded run repeats exactly."""
from __future__ import annotations

import dataclasses

import numpy as np

from . import _core


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50                 # 0 or None: off
    top_p: float = 1.0              # 1: off
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages tokens already in the prompt or the output
    seed: int | None = None          # None: a fresh random stream

    @classmethod
    def resolve(cls, generation_config: dict | None = None, **given) -> "SamplingParams":
        """Options from the call (None = not given) over generation_config.json's over the defaults."""
        values = {}
        gen = generation_config or {}
        for field in dataclasses.fields(cls):
            value = given.get(field.name)
            if value is None and field.name != "seed":
                value = gen.get(field.name)
            values[field.name] = field.default if value is None else value
        p = cls(do_sample=bool(values["do_sample"]), temperature=float(values["temperature"]),
                top_k=int(values["top_k"] or 0), top_p=float(values["top_p"]),
                repetition_penalty=float(values["repetition_penalty"]), seed=values["seed"])
        p.validate()
        return p

    def validate(self):
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be positive, not {self.repetition_penalty}")
        if self.do_sample:
            if not self.temperature > 0:
                raise ValueError(f"temperature must be positive when sampling, not {self.temperature} "
                                 "(do_sample=False decodes greedily)")
            if not 0 < self.top_p <= 1:
                raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
            if self.top_k < 0:
                raise ValueError(f"top_k must be 0 (off) or positive, not {self.top_k}")

    def generator(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def choose(self, logits: np.ndarray, history: np.ndarray, rng: np.random.Generator) -> int:
        """The next token from a float32 row of logits (changed in place) given the ids so far."""
        u = rng.random() if self.do_sample else 0.0
        return _core.sample(logits, history, self.do_sample, self.temperature, self.top_k, self.top_p,
                            self.repetition_penalty, u)
