"""Refactoring check: every registered method at a small fixed budget, numbers compared exactly.

A structural change (moving modules, merging harnesses) must leave every number the same for the
same seed and teacher. This runs each registered method through ``kdatlas.runner.run_method`` —
the stable entry point that outlives the internals — with a quick embedded teacher for the
white-box methods and the exact oracle teacher of the test suite for the black-box pipelines,
and writes (``--write FILE``) or compares (``--check FILE``) the metrics and loss curves.

    PYTHONPATH=. python benchmarks/parity.py --write /tmp/before.json   # on the old code
    PYTHONPATH=. python benchmarks/parity.py --check /tmp/before.json   # on the new code
    make parity                     # against benchmarks/results/parity.json (this machine kind)

The committed snapshot was written by the one-run code of issue 12 and equals the numbers of the
two harnesses it replaced, except DSKD (whose projectors now start from the run's seed instead of
the process's RNG history). Another CPU may differ in the last bits: then write a fresh snapshot
on the old code first.

Not a quality benchmark: the budgets are tiny (seconds per method) and only equality counts. It
runs in a fresh temporary cache, so nothing cached by an earlier version is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# White-box runs: enough steps that every loss path moves the weights.
WHITE_BOX_RUN = {"steps": 12, "sft_steps": 6, "eval_size": 16, "train_size": 48, "batch_size": 8,
                 "max_new_tokens": 8, "progress": False}
PIPELINE_STEPS = 6
# Data sizes of the pipelines, cut as in tests/e2e/test_methods.py (the oracle teacher answers fast).
PIPELINE_SIZES = ("num_instructions", "num_tasks", "num_queries", "num_passages", "num_conversations",
                  "num_initial")
# Axes beyond each method's defaults that have their own code paths.
EXTRA_CASES = {
    "forward-kl+topk": ("forward-kl", {"teacher_topk": 4}, None),
    "forward-kl+mixed": ("forward-kl", {}, "mixed:0.5"),
    "reverse-kl+student": ("reverse-kl", {}, "student"),
}


def _pipeline_overrides(defaults: dict[str, Any]) -> dict[str, str]:
    overrides = {name: "40" for name in PIPELINE_SIZES if name in defaults}
    if "score_ceiling" in defaults:
        overrides["score_ceiling"] = "1000"  # see tests/e2e/test_methods.py: a few-step scorer
    if "keep_rejected_responses" in defaults:
        overrides["keep_rejected_responses"] = "true"
    return overrides


def run_all(only: list[str] | None) -> dict[str, Any]:
    from rich.console import Console

    from kdatlas.runner import run_method
    from reference_impls.registry import registered_methods
    from reference_impls.run import RunConfig
    from reference_impls.teachers.embedded import QUICK_RECIPE
    from tests.support.fakes import OracleTeacher

    methods = registered_methods()
    cases: dict[str, tuple[str, dict[str, Any], str | None]] = {m: (m, {}, None) for m in sorted(methods)}
    cases.update(EXTRA_CASES)
    console = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - the tables are not compared
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["KDATLAS_CACHE"] = str(Path(scratch) / "cache")
        for name, (method_id, config_extra, source) in cases.items():
            if only and name not in only:
                continue
            module = methods[method_id].module
            started = time.perf_counter()
            out = Path(scratch) / "runs" / name
            if "instruction_following" in module:
                overrides = _pipeline_overrides(methods[method_id].defaults())
                config = RunConfig(device="cpu", steps=PIPELINE_STEPS, progress=False)
                result = run_method(method_id, config, out=out, overrides=overrides, console=console,
                                    teacher=OracleTeacher())
            else:
                config = RunConfig(device="cpu", **WHITE_BOX_RUN, **config_extra)
                result = run_method(method_id, config, out=out, source=source, console=console,
                                    teacher_recipe=QUICK_RECIPE)
            results[name] = {
                "metrics": result.metrics,
                "curves": result.curves,
                "hyperparameters": result.config["hyperparameters"],
            }
            print(f"{name:32s} {time.perf_counter() - started:6.1f} s", flush=True)
    return results


def _differences(before: Any, after: Any, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        found = [f"{path}/{k}: missing after" for k in before.keys() - after.keys()]
        found += [f"{path}/{k}: new after" for k in after.keys() - before.keys()]
        for key in before.keys() & after.keys():
            found += _differences(before[key], after[key], f"{path}/{key}")
        return found
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, help="write the results to this JSON file")
    group.add_argument("--check", type=Path, help="compare with a file written by --write")
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    args = parser.parse_args()
    results = run_all(args.only)
    if args.write:
        args.write.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(results)} cases to {args.write}")
        return 0
    before = json.loads(args.check.read_text())
    if args.only:
        before = {k: v for k, v in before.items() if k in args.only}
    differences = _differences(json.loads(json.dumps(before)), json.loads(json.dumps(results)))
    for line in differences:
        print(line)
    print(f"{len(results)} cases, {len(differences)} differences")
    return 1 if differences else 0


if __name__ == "__main__":
    raise SystemExit(main())
