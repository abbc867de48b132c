"""Run every black-box (instruction-following) method's default ``kdatlas run``, side by side.

    python benchmarks/blackbox_runs.py [--methods alpaca,lion] [--write]

With a fresh cache directory, so nothing is reused from earlier runs, it measures:

1. nothing for the teacher: the shipped embedded instruction teacher is used, and its card (exact
   accuracy per meta-task, its build time when it was shipped) is reported;
2. every black-box method's default run twice: the first generates its data with the teacher
   (the response cache starts empty, except what earlier methods in the same benchmark cached —
   Alpaca's instructions are shared with GPT-4-LLM and the reflection methods, as a user's runs
   share them), the second is the same command again, answered from the cache (the budget of
   issue 6: about a minute on 2 CPU cores, teacher and generation cached).

3. the ablations the method pages point to (``ABLATIONS``), once each, and the methods that
   target deep instructions at a larger step budget (``BUDGET_METHODS``, ``--budget-steps``);
4. the seed-to-seed spread of one method (``--noise-method``, seeds 0-2), the yardstick for
   which differences between methods mean anything.

Prints and (``--write``) saves ``benchmarks/BLACKBOX_RESULTS.md``: per method the teacher's, the
seed-only baseline's and the distilled student's exact match (overall and per group), the
pipeline's teacher calls and kept examples, and both times. Raw metrics and configs go to
``benchmarks/results/blackbox/<id>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "blackbox"

# The ablations the method pages point to: (method, --set overrides, what changes). Each runs
# once after the defaults, from the same response cache.
ABLATIONS = [
    ("vicuna", {"loss_on": "all"}, "loss on every token (user turns too)"),
    ("orca", {"system": "brief"}, "the same queries answered without explanations"),
    ("universalner", {"negative_sampling": "false"}, "no negative sampling"),
    ("gpt-4-llm", {"answer_temperature": "1.0"}, "Alpaca-style answers sampled at temperature 1"),
    ("persd", {"variant": "persd"}, "PERsD without the refinement format"),
    ("gpt4all", {"min_source_diversity": "0"}, "the low-diversity source kept"),
    ("lion", {"referee": "teacher"}, "the teacher as referee instead of the exact checker"),
]
# At the default budget no student learns the deeper instructions (depths 2-3), where the
# methods that target them (Evol-Instruct, Lion) should differ from uniform generation: these run
# again with ``--budget-steps`` optimizer steps (baseline and distilled alike).
BUDGET_METHODS = ["alpaca", "self-instruct", "evol-instruct", "lion"]


def group_label(metric: str) -> str:
    """``"exact_match (depth 2)"`` → ``"depth 2"``."""
    return metric[len("exact_match (") : -1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", help="comma-separated ids (default: every black-box method)")
    parser.add_argument(
        "--write", action="store_true", help="save benchmarks/BLACKBOX_RESULTS.md and the raw results"
    )
    parser.add_argument(
        "--keep-cache", action="store_true", help="use the normal cache instead of a fresh one"
    )
    parser.add_argument(
        "--noise-method",
        default="alpaca",
        help="method rerun at other seeds to show the seed-to-seed spread (default: alpaca; '' skips)",
    )
    parser.add_argument("--noise-seeds", type=int, default=3, help="seeds 0..N-1 of --noise-method")
    parser.add_argument("--no-ablations", action="store_true", help="skip the ablation runs")
    parser.add_argument(
        "--budget-steps", type=int, default=2400, help="steps of the larger-budget runs (0 skips them)"
    )
    args = parser.parse_args()

    import torch

    from kdatlas.runner import build_recipe
    from reference_impls.black_box.pipeline import TextPipeline
    from reference_impls.registry import registered_methods
    from reference_impls.run import RunConfig, run_recipe
    from reference_impls.run.instructions import DEFAULT_STEPS
    from reference_impls.teachers import catalog
    from reference_impls.teachers.instruct import load_or_train_instruct_teacher

    if not args.keep_cache:
        os.environ["KDATLAS_CACHE"] = tempfile.mkdtemp(prefix="kdatlas-blackbox-bench-")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    teacher = catalog.TEACHERS["instructions"]
    load_or_train_instruct_teacher("cpu", progress=False)  # the shipped one: trains nothing
    status = catalog.status(teacher)
    card = status["card"]
    build = "shipped" if status["shipped"] else "trained on first use"
    print(f"instruction teacher: {build}; accuracy per meta-task: {card['meta_task_accuracy']}")

    pipelines = sorted(
        m for m, r in registered_methods().items() if isinstance(build_recipe(m, {}).data, TextPipeline)
    )
    methods = args.methods.split(",") if args.methods else pipelines

    def run(method_id: str, overrides: dict[str, str] | None = None, **config: int) -> Any:
        """``kdatlas run method_id`` on the CPU: ``--set`` overrides, ``config`` RunConfig fields."""
        recipe = build_recipe(method_id, overrides or {})
        return run_recipe(recipe, RunConfig(device="cpu", progress=False, **config))

    rows = []
    for method_id in methods:
        first = time.perf_counter()
        result = run(method_id)
        first = time.perf_counter() - first
        again = time.perf_counter()
        run(method_id)
        again = time.perf_counter() - again
        metrics = result.metrics
        groups = sorted(k for k in metrics["distilled"] if k.startswith("exact_match ("))
        row = {
            "method": method_id,
            "evaluation": result.config["evaluation"]["name"],
            "metrics": metrics,
            "groups": groups,
            "teacher_requests": result.config["pipeline"].get("teacher_requests", 0),
            "training_examples": result.config["pipeline"]["training_examples"],
            "first_seconds": first,
            "cached_seconds": again,
            "config": result.config,
        }
        rows.append(row)
        em = {role: metrics[role]["exact_match"] for role in ("teacher", "baseline", "distilled")}
        print(
            f"{method_id:<28} EM teacher {em['teacher']:.3f} baseline {em['baseline']:.3f} "
            f"distilled {em['distilled']:.3f}  first {first:5.1f} s  cached {again:5.1f} s",
            flush=True,
        )

    ablations = []
    done = {row["method"]: row for row in rows}
    for method_id, overrides, change in [] if args.no_ablations else ABLATIONS:
        if method_id not in done:
            continue
        result = run(method_id, overrides)
        ablations.append((method_id, overrides, change, result.metrics))
        default_em = done[method_id]["metrics"]["distilled"]["exact_match"]
        print(
            f"{method_id} {overrides}: distilled EM {result.metrics['distilled']['exact_match']:.3f} "
            f"(default {default_em:.3f})",
            flush=True,
        )

    budget_runs = []
    for method_id in BUDGET_METHODS if args.budget_steps else []:
        if method_id not in done:
            continue
        tick = time.perf_counter()
        result = run(method_id, steps=args.budget_steps)
        budget_runs.append((method_id, result.metrics, time.perf_counter() - tick))
        print(
            f"{method_id} at {args.budget_steps} steps: distilled EM "
            f"{result.metrics['distilled']['exact_match']:.3f}",
            flush=True,
        )

    # The yardstick for "within noise": the same method at other seeds (student init, data order
    # and the teacher's sampling seeds all change; the held-out test set does not).
    spread: dict[int, dict[str, float]] = {}
    if args.noise_method:
        for row in rows:
            if row["method"] == args.noise_method:
                spread[0] = {role: row["metrics"][role]["exact_match"] for role in ("baseline", "distilled")}
        for seed in range(len(spread), args.noise_seeds):
            result = run(args.noise_method, seed=seed)
            spread[seed] = {role: result.metrics[role]["exact_match"] for role in ("baseline", "distilled")}
            print(f"{args.noise_method} seed {seed}: {spread[seed]}", flush=True)

    if args.write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        for row in rows:
            (RESULTS / f"{row['method']}.json").write_text(json.dumps(row, indent=2, default=str) + "\n")
        (RESULTS / "teacher_card.json").write_text(
            json.dumps(card, indent=2) + "\n"
        )
        lines = [
            f"Produced by `python benchmarks/blackbox_runs.py --write` on {platform.machine()}, "
            f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d')}; "
            "fresh response cache. Exact match on each method's held-out evaluation; *first* includes the "
            "teacher's generation (and the baseline), *cached* is the same command again.",
            "",
            "| method | evaluation | teacher | seed-only baseline | distilled | by group (baseline → distilled) | teacher calls | training examples | first (s) | cached (s) |",
            "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
        ]
        for row in rows:
            m = row["metrics"]
            groups = "; ".join(
                f"{group_label(g)}: {m['baseline'][g]:.3f} → {m['distilled'][g]:.3f}"
                for g in row["groups"]
            )
            lines.append(
                f"| [{row['method']}](entries/{row['method']}.md) | {row['evaluation']} | "
                f"{m['teacher']['exact_match']:.3f} | {m['baseline']['exact_match']:.3f} | "
                f"{m['distilled']['exact_match']:.3f} | {groups} | {row['teacher_requests']} | "
                f"{row['training_examples']} | {row['first_seconds']:.0f} | {row['cached_seconds']:.0f} |"
            )
        if ablations:
            lines += [
                "",
                "Ablations (`kdatlas run ID --set NAME=VALUE`), distilled student's exact match against the "
                "default's from the table above:",
                "",
                "| method | `--set` | what changes | default | ablation | by group (default → ablation) |",
                "|---|---|---|---:|---:|---|",
            ]
            for method_id, overrides, change, metrics in ablations:
                default = done[method_id]["metrics"]["distilled"]
                groups = "; ".join(
                    f"{group_label(g)}: {default[g]:.3f} → {metrics['distilled'][g]:.3f}"
                    for g in done[method_id]["groups"]
                    if g in metrics["distilled"]
                )
                setting = " ".join(f"{k}={v}" for k, v in overrides.items())
                lines.append(
                    f"| [{method_id}](entries/{method_id}.md) | `{setting}` | {change} | "
                    f"{default['exact_match']:.3f} | {metrics['distilled']['exact_match']:.3f} | {groups} |"
                )
        if budget_runs:
            depths = done[budget_runs[0][0]]["groups"]
            lines += [
                "",
                f"The same defaults at {args.budget_steps} optimizer steps instead of the default "
                f"{DEFAULT_STEPS} (`kdatlas run ID --steps {args.budget_steps}`; baseline and distilled "
                "alike), distilled student's exact match:",
                "",
                "| method | steps | seed-only baseline | distilled | "
                + " | ".join(group_label(g) for g in depths)
                + " | time (s) |",
                "|---|---:|---:|---:|" + "---:|" * len(depths) + "---:|",
            ]
            for method_id, metrics, seconds in budget_runs:
                lines.append(
                    f"| [{method_id}](entries/{method_id}.md) | {args.budget_steps} | "
                    f"{metrics['baseline']['exact_match']:.3f} | {metrics['distilled']['exact_match']:.3f} | "
                    + " | ".join(f"{metrics['distilled'][g]:.3f}" for g in depths)
                    + f" | {seconds:.0f} |"
                )
        if spread:
            seeds = sorted(spread)
            lines += [
                "",
                f"Seed-to-seed spread ({args.noise_method}, seeds {', '.join(map(str, seeds))}; each seed "
                "changes the student's initialisation, the data order and the teacher's samples): "
                "seed-only baseline "
                + ", ".join(f"{spread[s]['baseline']:.3f}" for s in seeds)
                + "; distilled "
                + ", ".join(f"{spread[s]['distilled']:.3f}" for s in seeds)
                + ". Differences between methods smaller than this spread are not evidence either way.",
            ]
        accuracy = card["meta_task_accuracy"]
        lines += [
            "",
            f"The instruction teacher ({card['key']}, {build}), greedy exact accuracy per meta-task "
            "on 100 held-out prompts each (the teacher card):",
            "",
            "| " + " | ".join(accuracy) + " |",
            "|" + "---:|" * len(accuracy),
            "| " + " | ".join(f"{v:.2f}" for v in accuracy.values()) + " |",
            "",
        ]
        (REPO / "benchmarks" / "BLACKBOX_RESULTS.md").write_text("\n".join(lines), encoding="utf-8")
        print("wrote benchmarks/BLACKBOX_RESULTS.md")


if __name__ == "__main__":
    main()
