"""The leaderboard on the site: a page with the committed board, and each method's own row.

The board is `benchmarks/results/leaderboard.json` (``kdatlas bench``), read at build time; a
site built without one says how to make it. Cells are formatted ``mean ± half-width`` of the 95%
Student-t interval over seeds, and the paired difference distilled − baseline carries the
verdict: *better* or *worse* when its interval excludes 0 (in the metric's better direction),
*not separated* otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdatlas.leaderboard import format_interval
from kdatlas.site.render import render

BOARD_FILE = Path("benchmarks") / "results" / "leaderboard.json"
LEADERBOARD_PAGE = "leaderboard.md"
# The metrics each suite's table shows (the board holds every metric the runs report).
SHOWN = {
    "strings": ("exact_match", "token_kl_to_teacher"),
    "instructions": ("exact_match",),
}
DEFAULT_SHOWN = ("exact_match",)


def load_board(root: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(board, None)``, ``(None, None)`` when none is committed, or ``(None, problem)``."""
    from kdatlas.leaderboard import read_board

    path = root / BOARD_FILE
    if not path.exists():
        return None, None
    try:
        return read_board(path), None
    except ValueError as error:
        return None, str(error)


def verdict(values: dict[str, Any]) -> str:
    if values["distilled_better"]:
        return "better"
    return "worse" if values["separated"] else "not separated"


@dataclass(frozen=True)
class Standing:
    """One metric of one method's row, formatted."""

    metric: str
    better: str
    teacher: str
    baseline: str
    distilled: str
    difference: str
    verdict: str
    seeds: int


def standing(board: dict[str, Any] | None, method_id: str) -> list[Standing]:
    """The method's row of the board, one `Standing` per shown metric (empty when not on it)."""
    row = next((r for r in (board or {}).get("rows", []) if r["method_id"] == method_id), None)
    if row is None:
        return []
    shown = SHOWN.get(row["evaluation"], DEFAULT_SHOWN)
    names = [name for name in shown if name in row["metrics"]] or [next(iter(row["metrics"]))]
    return [
        Standing(
            metric=name,
            better=row["metrics"][name]["better"],
            teacher=format_interval(row["metrics"][name]["teacher_interval"]),
            baseline=format_interval(row["metrics"][name]["baseline_interval"]),
            distilled=format_interval(row["metrics"][name]["distilled_interval"]),
            difference=format_interval(row["metrics"][name]["distilled_minus_baseline"]),
            verdict=verdict(row["metrics"][name]),
            seeds=len(row["seeds"]),
        )
        for name in names
    ]


def render_leaderboard_page(board: dict[str, Any] | None, entry_href: Callable[[str], str]) -> str:
    """The leaderboard page: one table per suite, rows sorted by the distilled student's mean."""
    suites: dict[str, list[dict[str, Any]]] = {}
    for row in (board or {}).get("rows", []):
        suites.setdefault(row["evaluation"], []).append(row)
    tables = []
    for suite, rows in sorted(suites.items()):
        metric = SHOWN.get(suite, DEFAULT_SHOWN)[0]
        rows = sorted(rows, key=lambda r: -r["metrics"][metric]["distilled_interval"]["mean"])
        verdicts = [verdict(r["metrics"][metric]) for r in rows]
        tables.append(
            {
                "suite": suite,
                "metric": metric,
                "counts": {v: verdicts.count(v) for v in ("better", "worse", "not separated")},
                "rows": [
                    {"id": r["method_id"], "href": entry_href(r["method_id"]), "standing": standing(board, r["method_id"]), "cost": r["cost"]}
                    for r in rows
                ],
            }
        )
    return render("leaderboard.md.j2", board=board, tables=tables, board_file=BOARD_FILE.as_posix())
