"""A new user's first runs: ``kdatlas run alpaca`` and ``kdatlas run forward-kl`` with an empty cache.

    python benchmarks/fresh_machine.py [--write]

Each command runs as a user types it (a subprocess of the installed CLI, imports included), with
its own empty ``KDATLAS_CACHE``: no teacher, baseline, response or top-k cache from earlier runs.
The teachers are the shipped ones, so neither run trains a teacher. Prints the wall time of each
against the one-minute budget, and checks that the run directory holds a student that
``AutoModelForCausalLM.from_pretrained`` loads, with its model card. ``--write`` saves the table
to ``benchmarks/results/fresh_machine.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_SECONDS = 60
METHODS = ("alpaca", "forward-kl")


def first_run(method_id: str) -> dict:
    """Time ``kdatlas run METHOD`` from an empty cache; check the student it leaves."""
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="kdatlas-fresh-") as scratch:
        out = Path(scratch) / "run"
        env = {**os.environ, "KDATLAS_CACHE": str(Path(scratch) / "cache")}
        command = [sys.executable, "-m", "kdatlas", "run", method_id, "--device", "cpu", "--no-progress", "--out", str(out)]
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        student = AutoModelForCausalLM.from_pretrained(out / "student")
        card = (out / "student" / "README.md").read_text(encoding="utf-8")
        metrics = json.loads((out / "metrics.json").read_text())
        trained_teacher = (Path(scratch) / "cache" / "teachers").exists()
    return {
        "method": method_id,
        "seconds": seconds,
        "ratio": seconds / BUDGET_SECONDS,
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "model_card": card.startswith("---"),
        "trained_a_teacher": trained_teacher,
        "exact_match": {role: metrics[role]["exact_match"] for role in ("teacher", "baseline", "distilled")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="save benchmarks/results/fresh_machine.md")
    args = parser.parse_args()
    rows = [first_run(method_id) for method_id in METHODS]
    lines = [
        "| command (empty cache) | seconds | budget | ratio | student loads | model card | trained a teacher | exact match: teacher / baseline / distilled |",
        "|---|---:|---:|---:|---|---|---|---|",
    ]
    for row in rows:
        em = row["exact_match"]
        lines.append(
            f"| `kdatlas run {row['method']}` | {row['seconds']:.1f} | {BUDGET_SECONDS} | {row['ratio']:.2f} | "
            f"yes ({row['student_parameters']:,} parameters) | {'yes' if row['model_card'] else 'no'} | "
            f"{'yes' if row['trained_a_teacher'] else 'no'} | "
            f"{em['teacher']:.3f} / {em['baseline']:.3f} / {em['distilled']:.3f} |"
        )
    print("\n".join(lines))
    if args.write:
        header = (
            f"Produced by `python benchmarks/fresh_machine.py --write` on {platform.machine()}, {os.cpu_count()} cores, "
            f"{time.strftime('%Y-%m-%d')}: each command with its own empty cache, imports included.\n\n"
        )
        target = REPO / "benchmarks" / "results" / "fresh_machine.md"
        target.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {target.relative_to(REPO)}")


if __name__ == "__main__":
    main()
