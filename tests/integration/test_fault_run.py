"""A short fault run with a fixed seed: every fault kind at least twice, each run followed by a clean
deploy, every invariant checked after each (see tests/faultrun.py; `inv faults` runs the long one)."""

from __future__ import annotations

import pytest

from tests.faultrun import FAULTS, run_faults

pytestmark = pytest.mark.integration

SEED = 20261126
FAULTED_RUNS = 15  # and as many clean deploys after them: 30 deploys and rollbacks


def test_fault_run_keeps_every_invariant() -> None:
    report = run_faults(SEED, FAULTED_RUNS)
    print(report.format())
    counts = report.counts()
    assert all(counts.get(kind, (0, 0))[0] >= 2 for kind in FAULTS), counts
    assert len(report.runs) == 2 * FAULTED_RUNS
    assert report.ok, "\n".join(report.failures())
