"""Measure the budgets of the embedded defaults on this machine, side by side in one run.

    python benchmarks/run_times.py [--methods forward-kl,seqkd] [--skip-docs] [--write]

Measures, with a fresh cache directory so nothing is reused from earlier runs:

1. the embedded teacher's rebuild from its recipe, as ``kdatlas teachers build strings`` does
   (budget 120 s on 2 CPU cores; runs use the shipped teacher and never train one);
2. every implemented method's default ``kdatlas run`` (budget 60 s each): the first run with a
   given student also trains its baseline, later ones reuse it from the cache, as a user's runs
   do (the row says when a run trained its baseline); the first row is a fresh machine's first
   run (empty cache);
3. the strict docs build (budget 60 s).

Prints a table with each time, its budget and the ratio time/budget, and the distilled-vs-baseline
token KL (both directions) and exact match of each run. ``--write`` also saves the table to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(label: str, budget: float, action) -> dict:
    start = time.perf_counter()
    detail = action() or ""
    seconds = time.perf_counter() - start
    row = {"what": label, "seconds": seconds, "budget": budget, "ratio": seconds / budget, "detail": detail}
    print(
        f"{label:<34} {seconds:7.1f} s  budget {budget:5.0f} s  ratio {seconds / budget:4.2f}  {detail}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", help="comma-separated ids (default: every implemented method)")
    parser.add_argument("--skip-docs", action="store_true", help="do not time the docs build")
    parser.add_argument("--write", action="store_true", help="save the table to benchmarks/RESULTS.md")
    args = parser.parse_args()

    os.environ["KDATLAS_CACHE"] = tempfile.mkdtemp(prefix="kdatlas-bench-")
    from kdatlas.runner import build_recipe, verdict
    from reference_impls.registry import registered_methods
    from reference_impls.run import RunConfig, run_recipe
    from reference_impls.teachers.embedded import TeacherRecipe, build_teacher

    # Black-box pipelines have their own benchmark (benchmarks/blackbox_runs.py).
    white_box = [
        m
        for m, r in registered_methods().items()
        if not r.module.startswith("reference_impls.black_box.")
    ]
    methods = args.methods.split(",") if args.methods else sorted(white_box)
    rows = [
        measure("teacher rebuild (kdatlas teachers build)", 120, lambda: build_teacher(TeacherRecipe(), "cpu", False) and "")
    ]

    def run(method_id: str) -> str:
        result = run_recipe(build_recipe(method_id, {}), RunConfig(device="cpu", progress=False))
        em = {role: result.metrics[role]["exact_match"] for role in ("teacher", "baseline", "distilled")}
        trained = "" if result.config["baseline_cached"] else " (This run also trained its baseline student.)"
        return (
            f"{verdict(result.metrics)} Exact match: distilled {em['distilled']:.3f}, "
            f"baseline {em['baseline']:.3f}, teacher {em['teacher']:.3f}.{trained}"
        )

    for method_id in methods:
        rows.append(measure(f"run {method_id}", 60, lambda method_id=method_id: run(method_id)))

    if not args.skip_docs:

        def build() -> str:
            env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
            with tempfile.TemporaryDirectory() as site:
                subprocess.run(
                    [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", site],
                    cwd=REPO,
                    env=env,
                    check=True,
                )
            return ""

        rows.append(measure("docs build --strict", 60, build))

    if args.write:
        lines = [
            "# Measured budgets",
            "",
            f"Produced by `python benchmarks/run_times.py --write` on {platform.machine()}, "
            f"{os.cpu_count()} cores, torch threads {__import__('torch').get_num_threads()}, "
            f"{time.strftime('%Y-%m-%d')}.",
            "",
            "| what | seconds | budget | ratio | result |",
            "|---|---:|---:|---:|---|",
            *(
                f"| {r['what']} | {r['seconds']:.1f} | {r['budget']:.0f} | {r['ratio']:.2f} | {r['detail']} |"
                for r in rows
            ),
            "",
        ]
        (REPO / "benchmarks" / "RESULTS.md").write_text("\n".join(lines), encoding="utf-8")
        print("wrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
