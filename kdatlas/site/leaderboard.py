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

from kdatlas.leaderboard import better_direction, format_interval, pairwise_wins
from kdatlas.site.render import render

BOARD_FILE = Path("benchmarks") / "results" / "leaderboard.json"
# The same board with the GPT-2-style student (`kdatlas bench --student-family gpt2`).
FAMILY_BOARD_FILE = Path("benchmarks") / "results" / "leaderboard_gpt2.json"
FAMILY_METRICS = ("exact_match", "oracle_kl", "ood_rouge_l")
# The classic methods of each branch over five seeds (`kdatlas bench --seeds 5 --methods ...`).
HEADLINE_BOARD_FILE = Path("benchmarks") / "results" / "leaderboard_headline.json"
HEADLINE_COMMAND = (
    "kdatlas bench --seeds 5 --methods vanilla-kd,forward-kl,reverse-kl,seqkd,gkd,distillm,alpaca,vicuna "
    "--out benchmarks/results/leaderboard_headline.json"
)
LEADERBOARD_PAGE = "leaderboard.md"
# The metrics each suite's headline table shows and each method page lists (the board holds
# every metric the runs report): the task metric, the golden metric, the proxy, robustness.
SHOWN = {
    "strings": ("exact_match", "oracle_kl", "token_kl_to_teacher", "attack_success_rate", "ood_exact_match"),
    "instructions": ("exact_match", "oracle_kl", "attack_success_rate"),
    "classification": ("accuracy", "class_kl_to_teacher", "teacher_agreement", "ood_accuracy"),
}
DEFAULT_SHOWN = ("exact_match", "oracle_kl")
HEADLINE = ("exact_match", "oracle_kl", "token_kl_to_teacher", "accuracy", "class_kl_to_teacher", "teacher_agreement")
ROBUSTNESS = ("attack_success_rate", "ood_exact_match", "ood_rouge_l", "ood_accuracy")


@dataclass(frozen=True)
class SuiteMetrics:
    """Which metric of a suite is its task metric, its golden one (closeness to the truth) and
    its proxy (closeness to the teacher), for the tables and plots."""

    task: str
    golden: str
    proxy: str
    golden_label: str
    proxy_label: str


GENERATIVE = SuiteMetrics("exact_match", "oracle_kl", "token_kl_to_teacher", "KL from the oracle (golden) ↓",
                          "token KL to the teacher (proxy) ↓")  # fmt: skip
# On the classification suite the labels are the generator's truth: accuracy is the golden metric.
SUITE_METRICS = {"classification": SuiteMetrics("accuracy", "accuracy", "class_kl_to_teacher",
                                                "accuracy against the true labels (golden) ↑",
                                                "class KL to the teacher (proxy) ↓")}  # fmt: skip
LABELS = {
    "exact_match": "exact match",
    "oracle_kl": "KL from the oracle (golden)",
    "token_kl_to_teacher": "token KL to the teacher (proxy)",
    "attack_success_rate": "attack success rate",
    "ood_exact_match": "OOD exact match",
    "ood_rouge_l": "OOD ROUGE-L",
    "accuracy": "accuracy (golden)",
    "class_kl_to_teacher": "class KL to the teacher (proxy)",
    "teacher_agreement": "agreement with the teacher",
    "ood_accuracy": "OOD accuracy",
}
MARKS = {"better": " ✓", "worse": " ✗", "not separated": ""}


def load_board(root: Path, file: Path = BOARD_FILE) -> tuple[dict[str, Any] | None, str | None]:
    """``(board, None)``, ``(None, None)`` when none is committed, or ``(None, problem)``."""
    from kdatlas.leaderboard import read_board

    path = root / file
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


@dataclass(frozen=True)
class Cell:
    """One metric of one row: the distilled student's mean ± interval and the paired difference."""

    distilled: str
    difference: str


def _cell(row: dict[str, Any], name: str) -> Cell:
    values = row["metrics"].get(name)
    if values is None:
        return Cell("—", "—")
    return Cell(format_interval(values["distilled_interval"]), format_interval(values["distilled_minus_baseline"]) + MARKS[verdict(values)])


def _mean(row: dict[str, Any], name: str, role: str = "distilled") -> float | None:
    interval = row["metrics"].get(name, {}).get(f"{role}_interval")
    return None if interval is None else interval["mean"]


def _plots(rows: list[dict[str, Any]], m: SuiteMetrics) -> list[str]:
    """Proxy vs golden, the golden difference per method, and cost vs quality (SVG)."""
    from kdatlas.site.plots import Point, Span, intervals, scatter

    figures = []
    both = [r for r in rows if _mean(r, m.proxy) is not None and _mean(r, m.golden) is not None]
    if both:
        points = [Point(_mean(r, m.proxy), _mean(r, m.golden), r["method_id"]) for r in both]
        baseline = both[0]
        points.append(Point(_mean(baseline, m.proxy, "baseline"), _mean(baseline, m.golden, "baseline"), "baseline", True))
        figures.append(scatter(points, title="Proxy vs golden: closeness to the teacher against closeness to the truth (means over seeds)",
                               x_label=m.proxy_label, y_label=m.golden_label))  # fmt: skip
    golden = [r for r in rows if m.golden in r["metrics"]]
    if golden:
        spans = []
        for r in sorted(golden, key=lambda r: r["metrics"][m.golden]["distilled_minus_baseline"]["mean"]):
            d = r["metrics"][m.golden]["distilled_minus_baseline"]
            spans.append(Span(r["method_id"], d["mean"], d["low"], d["high"], verdict(r["metrics"][m.golden]) == "better"))
        figures.append(intervals(spans, title="Golden metric, distilled − baseline per method (95% interval, paired by seed)",
                                 x_label=f"Δ {m.golden_label}"))  # fmt: skip
    costed = [r for r in rows if _mean(r, m.task) is not None]
    if costed:
        points = [Point(r["cost"]["seconds"], _mean(r, m.task), r["method_id"]) for r in costed]
        figures.append(scatter(points, title=f"Cost vs quality: wall seconds of a cell against the distilled student's {LABELS[m.task]}",
                               x_label="seconds per cell (teacher, baseline and distilled student)", y_label=f"{LABELS[m.task]} ↑"))  # fmt: skip
    return figures


def config_differences(board: dict[str, Any] | None, other: dict[str, Any] | None, *, allowed: tuple[str, ...]) -> list[str]:
    """The run settings in which ``other`` differs from ``board``, beyond ``allowed`` ones: a
    board set beside another is comparable only when these are none."""
    if not board or not other:
        return []
    mine, theirs = board.get("config", {}), other.get("config", {})
    return sorted(k for k in mine.keys() | theirs.keys() if k not in allowed and mine.get(k) != theirs.get(k))


def family_rows(board: dict[str, Any] | None, family_board: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per method of the GPT-2 board: its cells beside the Llama board's, for `FAMILY_METRICS`."""
    llama = {r["method_id"]: r for r in (board or {}).get("rows", [])}
    rows = []
    for row in (family_board or {}).get("rows", []):
        if row["method_id"] in llama:
            cells = {m: (_cell(llama[row["method_id"]], m), _cell(row, m)) for m in FAMILY_METRICS}
            rows.append({"id": row["method_id"], "cells": cells})
    return rows


def pairwise_rows(rows: list[dict[str, Any]], metric: str, entry_href: Callable[[str], str]) -> list[dict[str, Any]]:
    """The methods of one suite, best mean first, each with the methods it beats and is beaten by."""
    wins = pairwise_wins(rows, metric)
    if len(wins) < 3:
        return []
    sign = -1 if better_direction(metric) == "higher" else 1
    ranked = sorted((r for r in rows if r["method_id"] in wins), key=lambda r: sign * (_mean(r, metric) or 0.0))
    return [
        {
            "id": r["method_id"],
            "href": entry_href(r["method_id"]),
            "mean": format_interval(r["metrics"][metric]["distilled_interval"]),
            "beats": wins[r["method_id"]],
            "beaten_by": [other for other, beaten in wins.items() if r["method_id"] in beaten],
        }
        for r in ranked
    ]


def headline_board_rows(headline_board: dict[str, Any] | None, entry_href: Callable[[str], str]) -> list[dict[str, Any]]:
    """The five-seed board's rows, by suite, for the task and golden metrics."""
    rows = sorted((headline_board or {}).get("rows", []), key=lambda r: (r["evaluation"], -(_mean(r, "exact_match") or 0.0)))
    return [
        {"id": r["method_id"], "href": entry_href(r["method_id"]), "suite": r["evaluation"], "seeds": len(r["seeds"]),
         "cells": {m: _cell(r, m) for m in DEFAULT_SHOWN}}
        for r in rows
    ]  # fmt: skip


def render_leaderboard_page(
    board: dict[str, Any] | None,
    entry_href: Callable[[str], str],
    family_board: dict[str, Any] | None = None,
    headline_board: dict[str, Any] | None = None,
) -> str:
    """The leaderboard page: the five-seed headline board (when committed); per suite a table
    (task, golden and proxy metrics, cost), a robustness table, plots and which methods beat which;
    the model-family table."""
    suites: dict[str, list[dict[str, Any]]] = {}
    for row in (board or {}).get("rows", []):
        suites.setdefault(row["evaluation"], []).append(row)
    tables = []
    for suite, rows in sorted(suites.items()):
        metrics = SUITE_METRICS.get(suite, GENERATIVE)
        rows = sorted(rows, key=lambda r: -(_mean(r, metrics.task) or 0.0))
        headline = [m for m in HEADLINE if any(m in r["metrics"] for r in rows)]
        robustness = [m for m in ROBUSTNESS if any(m in r["metrics"] for r in rows)]
        counts = {
            name: {v: sum(verdict(r["metrics"][name]) == v for r in rows if name in r["metrics"]) for v in MARKS}
            for name in headline + robustness
        }
        # Which methods differ from each other: on the golden metric where the suite has one.
        pairwise_metric = metrics.golden if metrics.golden in headline else headline[0]
        tables.append(
            {
                "suite": suite,
                "headline": headline,
                "robustness": robustness,
                "counts": counts,
                "rows": [
                    {
                        "id": r["method_id"],
                        "href": entry_href(r["method_id"]),
                        "cost": r["cost"],
                        "cells": {m: _cell(r, m) for m in headline + robustness},
                    }
                    for r in rows
                ],
                "plots": _plots(rows, metrics),
                "pairwise_metric": pairwise_metric,
                "pairwise": pairwise_rows(rows, pairwise_metric, entry_href),
            }
        )
    # A board made with other settings (an older default) is not set beside this one.
    family_stale = config_differences(board, family_board, allowed=("student_family",))
    headline_stale = config_differences(board, headline_board, allowed=())
    return render(
        "leaderboard.md.j2", board=board, tables=tables, labels=LABELS, board_file=BOARD_FILE.as_posix(),
        family_stale=family_stale, headline_stale=headline_stale,
        families=family_rows(board, family_board), family_metrics=FAMILY_METRICS, entry_href=entry_href,
        headline_board=headline_board_rows(headline_board, entry_href), headline_board_metrics=DEFAULT_SHOWN,
        headline_board_command=HEADLINE_COMMAND,
    )  # fmt: skip
