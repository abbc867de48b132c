"""The leaderboard on the site: its page, each method's row on its own page, a bad board file."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from kdatlas.leaderboard import BOARD_VERSION, format_interval, pairwise_wins, summarise
from kdatlas.site.entry import render_entry
from kdatlas.site.generate import load_site
from kdatlas.site.leaderboard import BOARD_FILE, render_leaderboard_page, standing

REPO = Path(__file__).resolve().parents[2]


def _cell(method_id: str, seed: int, baseline: float, distilled: float, evaluation: str = "strings") -> dict:
    metrics = {"exact_match": distilled, "token_kl_to_teacher": 2.0 - distilled}
    base = {"exact_match": baseline, "token_kl_to_teacher": 2.0 - baseline}
    teacher = {"exact_match": 0.8, "token_kl_to_teacher": 0.0}
    cost = {"student_steps": 800, "warm_start_steps": 400, "teacher_requests": None, "teacher_tokens": None, "seconds": 30.0}
    return {"method_id": method_id, "seed": seed, "evaluation": evaluation, "cost": cost,
            "metrics": {"teacher": teacher, "baseline": base, "distilled": metrics}}  # fmt: skip


BOARD = {
    "version": BOARD_VERSION,
    "seeds": [0, 1, 2],
    "config": {},
    "cells_reused": 0,
    "rows": [
        summarise("forward-kl", [_cell("forward-kl", s, b, b + 0.05) for s, b in enumerate((0.20, 0.30, 0.25))]),
        summarise("reverse-kl", [_cell("reverse-kl", s, b, d) for s, (b, d) in enumerate(((0.2, 0.25), (0.3, 0.2), (0.25, 0.3)))]),
    ],
}


def test_a_method_page_shows_its_row_with_the_verdict() -> None:
    site, _ = load_site(REPO)
    page = render_entry(site.taxonomy.entries["forward-kl"], replace(site, board=BOARD))
    assert "## Where it stands" in page and "over 3 seeds" in page
    assert "| exact_match (higher is better) | 0.800 ± 0.000 | 0.250 ± 0.124 | 0.300 ± 0.124 |" in page
    assert "| 0.050 ± 0.000 | better |" in page  # the same gain at every seed
    unlisted = render_entry(site.taxonomy.entries["gkd"], replace(site, board=BOARD))
    assert "Where it stands" not in unlisted


def test_the_verdicts_follow_the_paired_interval() -> None:
    assert [s.verdict for s in standing(BOARD, "forward-kl")] == ["better", "better"]  # KL lower is better
    assert [s.verdict for s in standing(BOARD, "reverse-kl")] == ["not separated", "not separated"]
    assert standing(BOARD, "alpaca") == [] and standing(None, "forward-kl") == []


def test_the_leaderboard_page_links_every_row() -> None:
    page = render_leaderboard_page(BOARD, entry_href=lambda entry_id: f"entries/{entry_id}.md")
    assert "## Strings suite" in page
    assert "- exact match: 1 better than the baseline, 0 worse, 1 not separated." in page
    assert page.index("[forward-kl](entries/forward-kl.md)") < page.index("[reverse-kl](entries/reverse-kl.md)")
    # forward-kl's row: its mean, then its paired gain with the mark of a separated better result.
    assert "| [forward-kl](entries/forward-kl.md) | 0.300 ± 0.124 | 0.050 ± 0.000 ✓ |" in page
    assert '<div class="kd-sortable" markdown>' in page and "Cost vs quality" in page
    empty = render_leaderboard_page(None, entry_href=str)
    assert "No leaderboard is committed yet" in empty and "kdatlas bench" in empty


def test_a_damaged_board_file_is_a_build_problem(tmp_path: Path) -> None:
    for part in ("taxonomy", "bib", "CITATION.cff"):
        source = REPO / part
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / part)
    (tmp_path / BOARD_FILE).parent.mkdir(parents=True)
    (tmp_path / BOARD_FILE).write_text("{not json")
    site, problems = load_site(tmp_path)
    assert site.board is None
    assert any("not valid JSON" in p.message and "kdatlas bench" in p.fix for p in problems)
    (tmp_path / BOARD_FILE).write_text(json.dumps(BOARD))
    site, problems = load_site(tmp_path)
    assert site.board["rows"][0]["method_id"] == "forward-kl"


@pytest.mark.parametrize("method_id", ["forward-kl"])
def test_cells_keep_their_seed_order(method_id: str) -> None:
    row = summarise(method_id, [_cell(method_id, 2, 0.1, 0.2), _cell(method_id, 0, 0.3, 0.4)])
    assert row["seeds"] == [0, 2] and row["metrics"]["exact_match"]["baseline"] == [0.3, 0.1]


def test_a_metric_a_role_did_not_measure_is_shown_as_missing() -> None:
    # An endpoint teacher gives text, not likelihoods: no golden metric in its row.
    cells = []
    for seed, baseline in enumerate((4.0, 4.2, 4.1)):
        cell = _cell("alpaca", seed, 0.02, 0.05, evaluation="instructions")
        cell["metrics"]["baseline"]["oracle_kl"] = baseline
        cell["metrics"]["distilled"]["oracle_kl"] = baseline - 0.5
        cells.append(cell)
    golden = summarise("alpaca", cells)["metrics"]["oracle_kl"]
    assert golden["teacher"] is None and golden["teacher_interval"] is None
    assert golden["better"] == "lower" and golden["distilled_better"]
    assert format_interval(golden["teacher_interval"]) == "—"


def test_the_golden_metric_gets_its_columns_and_plots() -> None:
    def with_golden(cell: dict, shift: float) -> dict:
        for role, value in (("teacher", 0.8), ("baseline", 7.0), ("distilled", 7.0 - shift)):
            cell["metrics"][role]["oracle_kl"] = value
        return cell

    rows = [
        summarise("forward-kl", [with_golden(_cell("forward-kl", s, 0.2, 0.25), 0.5 + 0.1 * s) for s in range(3)]),
        summarise("reverse-kl", [with_golden(_cell("reverse-kl", s, 0.2, 0.2), (-0.2, 0.3, 0.0)[s]) for s in range(3)]),
    ]
    page = render_leaderboard_page({**BOARD, "rows": rows}, entry_href=lambda entry_id: entry_id)
    assert "KL from the oracle (golden)" in page and "- KL from the oracle (golden): 1 better than the baseline" in page
    assert "Proxy vs golden" in page and "Golden metric, distilled − baseline per method" in page
    assert page.count("<svg") == 3


def test_the_family_board_is_set_beside_the_default_one() -> None:
    gpt2 = {**BOARD, "rows": [summarise("forward-kl", [_cell("forward-kl", s, 0.2, 0.21 + 0.01 * s) for s in range(3)])]}
    page = render_leaderboard_page(BOARD, entry_href=lambda entry_id: entry_id, family_board=gpt2)
    assert "## Model families" in page
    assert "| [forward-kl](forward-kl) | llama | 0.300 ± 0.124 | 0.050 ± 0.000 ✓ |" in page
    assert "| | gpt2 | 0.220 ± 0.025 | 0.020 ± 0.025 | — | — |" in page  # no golden metric in these cells
    assert "## Model families" not in render_leaderboard_page(BOARD, entry_href=str)


def _row(method_id: str, distilled: tuple[float, ...], seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    return summarise(method_id, [_cell(method_id, s, 0.2, d) for s, d in zip(seeds, distilled, strict=True)])


def test_pairwise_wins_pair_by_seed_and_follow_the_direction() -> None:
    # b is 0.1 above a at every seed: separated although the seeds spread far more than 0.1;
    # c crosses a (above at one seed, below at two): not separated from it.
    rows = [_row("a", (0.1, 0.5, 0.3)), _row("b", (0.2, 0.6, 0.4)), _row("c", (0.3, 0.4, 0.25))]
    assert pairwise_wins(rows, "exact_match") == {"a": [], "b": ["a"], "c": []}
    assert pairwise_wins(rows, "token_kl_to_teacher") == {"a": [], "b": ["a"], "c": []}  # 2 − d: lower is better
    # Only the seeds both ran are paired; one seed in common separates nothing.
    partial = [_row("a", (0.1, 0.5, 0.3)), _row("d", (0.9, 0.1, 0.9), seeds=(2, 3, 4))]
    assert pairwise_wins(partial, "exact_match") == {"a": [], "d": []}


def test_the_page_says_which_methods_beat_which_and_shows_the_headline_board() -> None:
    board = {**BOARD, "rows": [_row("a", (0.1, 0.5, 0.3)), _row("b", (0.2, 0.6, 0.4)), _row("c", (0.3, 0.4, 0.25))]}
    page = render_leaderboard_page(board, entry_href=lambda entry_id: entry_id)
    assert "### Which methods beat which" in page and "3 methods make 3\ncomparisons" in page
    assert "| [b](b) | 0.400 ± 0.497 | a | — |" in page and "| [a](a) | 0.300 ± 0.497 | — | b |" in page
    assert "Which methods beat which" not in render_leaderboard_page(BOARD, entry_href=str)  # two methods
    five = {**BOARD, "seeds": [0, 1, 2, 3, 4], "rows": [_row("forward-kl", (0.3, 0.3, 0.3, 0.3, 0.3), seeds=(0, 1, 2, 3, 4))]}
    headline = render_leaderboard_page(BOARD, entry_href=lambda entry_id: entry_id, headline_board=five)
    assert "## Headline: the classic methods over five seeds" in headline
    assert "| [forward-kl](forward-kl) | strings | 5 | 0.300 ± 0.000 | 0.100 ± 0.000 ✓ | — | — |" in headline
    assert "## Headline" not in page


def test_a_board_made_with_other_settings_is_not_set_beside_this_one() -> None:
    gpt2 = {**BOARD, "config": {"train_size": 1000}, "rows": BOARD["rows"][:1]}
    page = render_leaderboard_page({**BOARD, "config": {"train_size": 300}}, entry_href=str, family_board=gpt2, headline_board=gpt2)
    assert "made with other settings\n(train_size) than this board" in page
    assert "| | gpt2 |" not in page and "## Headline" not in page
    same = render_leaderboard_page({**BOARD, "config": {"train_size": 1000, "student_family": "llama"}}, entry_href=str,
                                   family_board={**gpt2, "config": {"train_size": 1000, "student_family": "gpt2"}})  # fmt: skip
    assert "| | gpt2 |" in same
