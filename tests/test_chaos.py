"""A smaller chaos run inside ``make test`` (the full one is ``make chaos``); see tests/chaos.py."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from tests.chaos import ChaosConfig, run_chaos

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server for a private Redis")
def test_no_run_lost_or_doubled_under_faults() -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.SystemRandom().randrange(1_000_000)))
    report = run_chaos(ChaosConfig(runs=300, seed=seed, kills=3))
    print(report.text())
    assert report.ok, f"reproduce with CHAOS_SEED={seed}\n{report.text()}"
    assert len([f for f in report.faults if f[1].startswith("sigkill")]) == 9
