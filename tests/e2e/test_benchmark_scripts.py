"""The benchmark scripts still run against the current code (a smoke run each where one is cheap).

The capacity-gap script broke silently once (a recipe field it replaced had moved): its quick
mode runs here, on tiny budgets, in a fresh cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_capacity_gap_sweep_runs_in_quick_mode(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "KDATLAS_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "benchmarks/capacity_gap.py", "--quick", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "capacity_gap.json").read_text())["rows"]
    assert [(row["fraction"], row["init"]) for row in rows] == [
        (0.2, "pruned"), (0.2, "random"), (0.5, "pruned"), (0.5, "random")
    ]
    assert all(row["teacher_em"] > 0.7 for row in rows)  # the shipped teacher
    assert (tmp_path / "capacity_gap.png").stat().st_size > 0


def test_the_calibration_sweep_runs_in_quick_mode(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "KDATLAS_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "benchmarks/calibration.py", "--quick", "--seeds", "2", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "calibration.json").read_text())["rows"]
    assert [(row["method"], row["setting"]) for row in rows] == [("forward-kl", "default"), ("forward-kl", {"train_size": 1000})]
    assert all(len(row["oracle_kl"]["distilled"]) == 2 for row in rows)
    assert "| strings | forward-kl | train_size=1000 |" in (tmp_path / "calibration.md").read_text()
