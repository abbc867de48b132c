"""The leaderboard: every implemented method, several seeds, means with intervals, paired against the baseline.

``kdatlas bench`` runs each (method, seed) cell through `reference_impls.run.run_recipe` — the
same students, budget and held-out items for every method of a suite, the baseline of the same
seed beside it — and keeps each cell in the cache under a digest of its code and config, so a
rerun recomputes only the cells whose method, shared code, teacher or settings changed. The
board is JSON (``benchmarks/results/leaderboard.json`` when committed); ``kdatlas leaderboard``
prints it.

Per method and metric the board holds the per-seed values of the teacher, the baseline and the
distilled student, their means with 95% Student-t intervals, and the paired difference
distilled − baseline over seeds with its interval (`kdatlas.stats`): *separated* means that
interval excludes 0, in the metric's better direction or not. Cost columns: optimizer steps,
teacher requests and tokens of black-box pipelines, wall seconds.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from kdatlas.stats import mean_interval, paired_difference

BOARD_VERSION = 1
DEFAULT_SEEDS = (0, 1, 2)
ROLES = ("teacher", "baseline", "distilled")
# The metrics where lower is better (every other metric the suites report: higher).
LOWER_IS_BETTER = (
    "token_kl_to_teacher",
    "token_reverse_kl_to_teacher",
    "token_tvd_to_teacher",
    "oracle_kl",
    "attack_success_rate",
    "class_kl_to_teacher",
)
REPO = Path(__file__).resolve().parents[1]
# Code every cell depends on, whatever its method (each method adds its own module).
SHARED_CODE = ("losses", "tasks", "core", "teachers", "teachers/server", "run", "black_box", "white_box")


def better_direction(metric: str) -> str:
    """``"higher"`` or ``"lower"``; group metrics such as ``exact_match (depth 2)`` follow their base."""
    base = metric.split(" (")[0]
    return "lower" if base in LOWER_IS_BETTER else "higher"


def format_interval(summary: dict[str, Any] | None) -> str:
    """``mean ± half-width`` of a stored interval (the t interval is symmetric); the mean alone
    for one seed; ``—`` where the metric was not measured."""
    if summary is None:
        return "—"
    if summary["low"] is None:
        return f"{summary['mean']:.3f}"
    return f"{summary['mean']:.3f} ± {(summary['high'] - summary['low']) / 2:.3f}"


def code_digest(module: str) -> str:
    """Digest of the shared layers and of the method's own module (its folder for a package), with
    the private helpers beside it (``_cross_tokenizer.py``, ``_bootstrap.py``)."""
    from reference_impls.core.cache import digest, source_digest

    root = REPO / "reference_impls"
    origin = Path(importlib.util.find_spec(module).origin)
    own = [origin.parent] if origin.name == "__init__.py" else [origin]
    helpers = sorted(p for p in own[0].parent.glob("_*.py") if p.name != "__init__.py")
    files = [*(p for p in own if p.is_file()), *helpers]
    folders = [p for p in own if p.is_dir()]
    return digest(
        {
            "shared": source_digest(*(root / folder for folder in SHARED_CODE)),
            "method": source_digest(*folders) if folders else "",
            "files": [f.read_text(encoding="utf-8") for f in files],
        }
    )


def _cell_key(
    method_id: str, seed: int, config: Any, overrides: dict[str, str], source: str | None
) -> dict[str, Any]:
    from reference_impls.registry import get_method
    from reference_impls.teachers.catalog import TEACHERS

    return {
        "board": BOARD_VERSION,
        "method": method_id,
        "seed": seed,
        "config": {k: v for k, v in asdict(config).items() if k != "progress"},
        "code": code_digest(get_method(method_id).module),
        "teachers": {name: teacher.key for name, teacher in TEACHERS.items()},
        # A variant (the claims' arms) adds what it changes; the board's own cells keep their key.
        **({"overrides": overrides} if overrides else {}),
        **({"source": source} if source else {}),
    }


def run_cell(
    method_id: str,
    seed: int,
    config: Any,
    *,
    overrides: dict[str, str] | None = None,
    source: str | None = None,
    run: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """One (method, seed) cell: metrics of teacher, baseline and distilled student, and cost.

    ``overrides`` (hyper-parameters, as ``--set`` takes them) and ``source`` (as ``--source``)
    make a variant of the method. Read from the cache when the same code and config ran before;
    ``run`` (default `reference_impls.run.run_recipe`) is how tests pass a quick teacher.
    """
    from kdatlas.runner import build_recipe, with_source
    from reference_impls.core.cache import cache_root, digest, read_json, write_json_atomically
    from reference_impls.run import run_recipe

    overrides = dict(overrides or {})
    recipe = build_recipe(method_id, overrides)
    if source is not None:
        recipe = with_source(recipe, source)
    config = replace(config, seed=seed)
    if recipe.evaluation != "strings":  # options of the string suite that a pipeline refuses
        config = replace(config, sft_steps=None, data=None, eval_data=(), teacher_topk=None)
    key = _cell_key(method_id, seed, config, overrides, source)
    path = cache_root() / "leaderboard" / f"{method_id}-{seed}-{digest(key)}.json"
    cached = read_json(path)
    if cached is not None:
        return {**cached, "cached": True}
    started = time.perf_counter()
    result = (run or run_recipe)(recipe, config)
    pipeline = result.config.get("pipeline", {})
    run_config = result.config["run"]
    cell = {
        "method_id": method_id,
        "seed": seed,
        "evaluation": result.config.get("evaluation", {}).get("name", "strings"),
        "metrics": result.metrics,
        "cost": {
            "student_steps": run_config["steps"],
            "warm_start_steps": run_config.get("sft_steps") or 0,
            "teacher_requests": pipeline.get("teacher_requests"),
            "teacher_tokens": pipeline.get("teacher_tokens"),
            "seconds": time.perf_counter() - started,
        },
    }
    write_json_atomically(path, {**cell, "key": key})
    return {**cell, "cached": False}


def summarise(method_id: str, cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A board row from the cells of one method (one per seed, same order for every metric)."""
    cells = sorted(cells, key=lambda c: c["seed"])
    metrics: dict[str, Any] = {}
    # Every metric any seed's distilled student reports, in first-seen order (one seed may lack
    # a metric: no attack success rate where it answered nothing correctly).
    names = dict.fromkeys(name for c in cells for name in c["metrics"]["distilled"])
    for name in names:
        # A role may lack a metric: an endpoint teacher has no likelihoods for the golden metric.
        values = {role: [c["metrics"][role].get(name) for c in cells] for role in ROLES}
        values = {role: None if None in column else column for role, column in values.items()}
        difference = paired_difference(values["distilled"], values["baseline"])
        direction = better_direction(name)
        sign = 1 if direction == "higher" else -1
        metrics[name] = {
            "better": direction,
            **{role: values[role] for role in ROLES},
            **{
                f"{role}_interval": None if values[role] is None else mean_interval(values[role]).as_dict()
                for role in ROLES
            },
            "distilled_minus_baseline": difference.as_dict(),
            "separated": difference.excludes_zero,
            "distilled_better": difference.excludes_zero and sign * difference.mean > 0,
        }
    costs = [c["cost"] for c in cells]

    def mean_of(field: str) -> float | None:
        present = [c[field] for c in costs if c.get(field) is not None]
        return sum(present) / len(present) if present else None

    return {
        "method_id": method_id,
        "evaluation": cells[0]["evaluation"],
        "seeds": [c["seed"] for c in cells],
        "metrics": metrics,
        "cost": {field: mean_of(field) for field in costs[0]},
    }


def pairwise_wins(rows: Sequence[dict[str, Any]], metric: str) -> dict[str, list[str]]:
    """Per method of ``rows`` (one suite), the methods its distilled student beats on ``metric``.

    A beats B when the paired difference A − B over the seeds both ran (same seed: same student
    initialisation and data order) excludes 0 in the metric's better direction. With n methods
    there are n(n−1)/2 comparisons, each at 95%: about one in twenty separates by chance.
    """
    sign = 1 if better_direction(metric) == "higher" else -1
    per_seed = {
        row["method_id"]: dict(zip(row["seeds"], row["metrics"][metric]["distilled"], strict=True))
        for row in rows
        if row["metrics"].get(metric, {}).get("distilled") is not None
    }
    wins: dict[str, list[str]] = {method: [] for method in per_seed}
    for a, values_a in per_seed.items():
        for b, values_b in per_seed.items():
            seeds = sorted(values_a.keys() & values_b.keys())
            if a == b or len(seeds) < 2:
                continue
            difference = paired_difference([values_a[s] for s in seeds], [values_b[s] for s in seeds])
            if difference.excludes_zero and sign * difference.mean > 0:
                wins[a].append(b)
    return wins


def build_board(
    methods: Sequence[str],
    seeds: Sequence[int] = DEFAULT_SEEDS,
    config: Any = None,
    *,
    progress: bool = True,
    run: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Run (or read from the cache) every (method, seed) cell and summarise each method."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from reference_impls.core.recipe import RunConfig

    if not seeds:
        raise ValueError("the board needs at least one seed")
    config = replace(config or RunConfig(), progress=False)
    rows, reused = [], 0
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("leaderboard cells", total=len(methods) * len(seeds))
        for method_id in methods:
            cells = []
            for seed in seeds:
                bar.update(task, description=f"{method_id}, seed {seed}")
                cell = run_cell(method_id, seed, config, run=run)
                reused += cell.pop("cached")
                cells.append(cell)
                bar.advance(task)
            rows.append(summarise(method_id, cells))
    return {
        "version": BOARD_VERSION,
        "seeds": list(seeds),
        "config": {k: v for k, v in asdict(config).items() if k not in ("progress", "seed")},
        "cells_reused": reused,
        "rows": rows,
    }


def merge_boards(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``existing`` with the rows of ``new`` added or replaced (``kdatlas bench --merge``): a method
    added later joins the committed board without every other cell being run again.

    Raises:
        ValueError: The boards were made with other seeds or settings (their rows would not be
            comparable): rerun the whole board instead.
    """
    def as_json(value: Any) -> Any:  # a fresh board holds tuples where a read one holds lists
        return json.loads(json.dumps(value))

    mine, theirs = as_json({k: existing.get(k) for k in ("seeds", "config")}), as_json({k: new.get(k) for k in ("seeds", "config")})
    differ = ["seeds"] if mine["seeds"] != theirs["seeds"] else []
    differ += sorted(k for k in mine["config"].keys() | theirs["config"].keys() if mine["config"].get(k) != theirs["config"].get(k))
    if differ:
        raise ValueError(
            f"the committed board was made with other settings ({', '.join(differ)}): its rows and the new "
            "ones would not be comparable; run the whole board without --merge"
        )
    rows = {row["method_id"]: row for row in existing["rows"]} | {row["method_id"]: row for row in new["rows"]}
    return {**existing, "cells_reused": existing.get("cells_reused", 0) + new["cells_reused"],
            "rows": [rows[method] for method in sorted(rows)]}  # fmt: skip


def write_board(board: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(board, indent=2) + "\n", encoding="utf-8")


def read_results_file(path: Path, version: int, what: str, command: str, error: type[ValueError] = ValueError) -> dict[str, Any]:
    """A versioned JSON results file (a board, claim results), or ``error`` saying what to run.

    Raises:
        ValueError: (or ``error``) Missing, not JSON, or of another version — naming ``command``.
    """
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"no {what} at {path}: run `{command}` to make one") from None
    except json.JSONDecodeError as problem:
        raise error(f"{path} is not valid JSON ({problem}); run `{command}` again") from None
    if not isinstance(results, dict) or results.get("version") != version:
        found = results.get("version") if isinstance(results, dict) else None
        raise error(f"{path} holds {what} of version {found!r}, not {version}: rerun `{command}`")
    return results


def read_board(path: Path) -> dict[str, Any]:
    """A board written by `write_board` (see `read_results_file` for the errors)."""
    return read_results_file(path, BOARD_VERSION, "leaderboard", "kdatlas bench")
