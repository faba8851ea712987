"""The train/test split, by patient: every item of a patient goes to the same side, so no patient's
images are in both. A case without a patient id is its own unit.

Patients are ordered by SHA-256 of (seed, patient key) and the first round(test_fraction x patients)
go to test (at least one, and at least one left for train, when there are two or more patients and
the fraction is between 0 and 1). The assignment depends only on the seed and the patient, never
on the order of the manifest.
"""
from __future__ import annotations

import hashlib


def patients_for_test(patient_keys, test_fraction: float, seed: int = 0) -> set:
    """The set of patient keys that go to the test side."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"--test-fraction must be between 0 and 1 (got {test_fraction})")
    keys = sorted(set(patient_keys), key=lambda k: hashlib.sha256(f"{seed}|{k}".encode("utf-8")).hexdigest())
    n = round(test_fraction * len(keys))
    if 0.0 < test_fraction < 1.0 and len(keys) >= 2:
        n = min(max(n, 1), len(keys) - 1)
    return set(keys[:n])
