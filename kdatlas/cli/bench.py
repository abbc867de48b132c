"""``kdatlas bench`` runs the leaderboard; ``kdatlas leaderboard`` prints it (`kdatlas.leaderboard`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kdatlas.cli.common import console, fail

BOARD = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "leaderboard.json"
# A CI-sized board: two methods of each suite, two seeds, tiny budgets (no claim is read from it).
QUICK = {"methods": ["forward-kl", "alpaca"], "seeds": 2, "steps": 40, "sft_steps": 20, "eval_size": 24}


def bench(
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated method ids (default: every implemented method).")
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..N-1 per method (≥ 3 for intervals worth reading).")] = 3,
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps (default: each suite's budget).")] = None,
    sft_steps: Annotated[int | None, typer.Option(min=0, help="Warm-start steps (string suite).")] = None,
    eval_size: Annotated[int | None, typer.Option(min=1, help="Held-out items (default: each suite's).")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="Generation limit of the white-box cells (default 24).")
    ] = None,
    student_family: Annotated[
        str, typer.Option(help="Embedded student family: llama or gpt2 (gpt2 boards go to leaderboard_gpt2.json).")
    ] = "llama",
    teacher: Annotated[str | None, typer.Option(help="Teacher for every cell: a local path (from_pretrained).")] = None,
    student: Annotated[str | None, typer.Option(help="Student for every cell: a local path (from_pretrained).")] = None,
    data: Annotated[str | None, typer.Option(help="JSONL data for the white-box cells (prompt/response lines).")] = None,
    eval_data: Annotated[
        list[str] | None, typer.Option(help="A further held-out JSONL set for the white-box cells (repeatable).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    quick: Annotated[bool, typer.Option(help="The CI subset: forward-kl and alpaca, 2 seeds, tiny budgets.")] = False,
    out: Annotated[Path, typer.Option(help="Where the board's JSON goes.")] = BOARD,
    merge: Annotated[
        bool, typer.Option(help="Add or replace these methods' rows in the board at --out, keeping the others.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
) -> None:
    """Run every (method, seed) cell of the leaderboard, reusing cached cells, and write its JSON."""
    from kdatlas.leaderboard import build_board, merge_boards, read_board, write_board
    from kdatlas.runner import RunError, build_recipe
    from reference_impls.core.models import STUDENT_FAMILIES
    from reference_impls.core.recipe import RunConfig
    from reference_impls.registry import registered_methods

    if quick:
        methods, seeds = ",".join(QUICK["methods"]), QUICK["seeds"]
        steps, sft_steps, eval_size = QUICK["steps"], QUICK["sft_steps"], QUICK["eval_size"]
        out = BOARD.with_name("leaderboard_quick.json") if out == BOARD else out  # never the real board
    if student_family not in STUDENT_FAMILIES:
        raise fail(f"unknown student family {student_family!r}: choose one of {', '.join(STUDENT_FAMILIES)}")
    chosen = methods.split(",") if methods else sorted(registered_methods())
    unknown = sorted(set(chosen) - set(registered_methods()))
    if unknown:
        raise fail(f"no implemented method {', '.join(unknown)} (see `kdatlas list --status implemented`)")
    if (teacher or student or data) and out == BOARD:
        raise fail("a board of your own models or data needs its own file: add --out PATH (the default is the embedded board)")
    if student_family != "llama":
        # Methods that build their student from the (Llama-style) teacher have no other family.
        chosen = [m for m in chosen if build_recipe(m, {}).students.build is None]
        out = BOARD.with_name(f"leaderboard_{student_family}.json") if out == BOARD else out
    config = RunConfig(
        device=device, steps=steps, sft_steps=sft_steps, eval_size=eval_size, max_new_tokens=max_new_tokens,
        student_family=student_family,
        teacher=teacher, student=student, data=data, eval_data=tuple(eval_data or ()),
    )  # fmt: skip
    existing = None
    if merge and out.exists():
        try:
            existing = read_board(out)
        except ValueError as error:
            raise fail(str(error)) from None
    try:
        board = build_board(chosen, range(seeds), config, progress=progress)
        if existing is not None:
            board = merge_boards(existing, board)
    except (RunError, ValueError) as error:
        raise fail(str(error)) from None
    write_board(board, out)
    console.print(f"{len(board['rows'])} methods{' (merged)' if existing else ''} × {seeds} seeds ({board['cells_reused']} cells from the cache) → {out}")


def leaderboard(
    as_json: Annotated[bool, typer.Option("--json", help="Print the board's JSON.")] = False,
    metric: Annotated[str, typer.Option(help="The metric shown in the table.")] = "exact_match",
    file: Annotated[Path, typer.Option(help="The board to read.")] = BOARD,
) -> None:
    """Print the committed leaderboard: per method the baseline, the distilled student and their
    paired difference over seeds (mean ± 95% interval), and the cost."""
    from kdatlas.leaderboard import format_interval, read_board

    try:
        board = read_board(file)
    except ValueError as error:
        raise fail(str(error)) from None
    if as_json:
        console.print_json(json.dumps(board))
        return
    table = Table(title=f"{metric}, seeds {', '.join(map(str, board['seeds']))} (mean ± 95% interval)", title_justify="left")
    for column in ("method", "suite", "teacher", "baseline", "distilled", "distilled − baseline", "steps", "teacher calls", "s"):
        table.add_column(column, justify="left" if column in ("method", "suite") else "right")
    for row in board["rows"]:
        values = row["metrics"].get(metric)
        if values is None:
            continue
        mark = " ✓" if values["distilled_better"] else (" ✗" if values["separated"] else "")
        cost = row["cost"]
        calls = "—" if cost["teacher_requests"] is None else f"{cost['teacher_requests']:.0f}"
        table.add_row(
            row["method_id"], row["evaluation"], format_interval(values["teacher_interval"]),
            format_interval(values["baseline_interval"]), format_interval(values["distilled_interval"]),
            format_interval(values["distilled_minus_baseline"]) + mark,
            f"{cost['student_steps']:.0f}", calls, f"{cost['seconds']:.0f}",
        )  # fmt: skip
    console.print(table)
    console.print("✓ distilled better than the baseline at 95% (paired over seeds); ✗ worse; no mark: not separated")


def claims(
    run: Annotated[bool, typer.Option("--run", help="Run the claims' experiments (cached cells are reused) and write the results.")] = False,
    only: Annotated[str | None, typer.Option(help="Comma-separated claim ids (default: every claim).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results' JSON.")] = False,
    file: Annotated[Path | None, typer.Option(help="The results file (default: benchmarks/results/claims.json).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
) -> None:
    """The papers' claims with their verdicts at toy scale (reproduced, not reproduced, inconclusive)."""
    from kdatlas.claims import (
        RESULTS_FILE,
        ClaimsError,
        evaluate_claims,
        load_claims,
        read_results,
        write_results,
    )
    from kdatlas.runner import RunError

    path = file or RESULTS_FILE
    try:
        if run:
            seeds, chosen = load_claims()
            if only:
                wanted = only.split(",")
                unknown = sorted(set(wanted) - {c.id for c in chosen})
                if unknown:
                    raise fail(f"no claim {', '.join(unknown)}; the ids are: {', '.join(c.id for c in chosen)}")
                chosen = [c for c in chosen if c.id in wanted]
            results = evaluate_claims(chosen, range(seeds), progress=progress)
            write_results(results, path, only=bool(only))
        results = read_results(path)
    except (ClaimsError, RunError) as error:
        raise fail(str(error)) from None
    if as_json:
        console.print_json(json.dumps(results))
        return
    table = Table(title=f"claims, seeds {', '.join(map(str, results['seeds']))}", title_justify="left")
    for column in ("claim", "paper", "verdict", "evidence (a − b, mean ± 95% interval)"):
        table.add_column(column)
    for claim in results["claims"]:
        table.add_row(claim["id"], claim["paper"], claim["verdict"], claim_evidence(claim))
    console.print(table)


def claim_evidence(claim: dict) -> str:
    """One line per check (or the per-family bests) for the table."""
    from kdatlas.leaderboard import format_interval

    if claim["kind"] == "family":
        return "; ".join(f"{family}: best {method}" for family, method in claim["best"].items())
    return "\n".join(
        f"{c['metric']}: {c['a']} − {c['b']} = {format_interval(c['a_minus_b'])} ({c['verdict']})" for c in claim["checks"]
    )
