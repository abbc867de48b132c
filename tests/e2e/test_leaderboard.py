"""``kdatlas bench --quick`` (the CI subset) and ``kdatlas leaderboard``: cells cached by code and
config, rows with per-seed values, intervals, the paired difference and cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdatlas import leaderboard
from kdatlas.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_board(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("board")
    patch = pytest.MonkeyPatch()
    patch.setenv("KDATLAS_CACHE", str(folder / "cache"))
    try:
        result = runner.invoke(app, ["bench", "--quick", "--out", str(folder / "board.json"), "--no-progress"])
        assert result.exit_code == 0, result.output
        board = json.loads((folder / "board.json").read_text())
        again = runner.invoke(app, ["bench", "--quick", "--out", str(folder / "again.json"), "--no-progress"])
        assert again.exit_code == 0, again.output
        yield folder, board
    finally:
        patch.undo()


def test_every_cell_of_the_quick_board_is_summarised(quick_board: tuple[Path, dict]) -> None:
    _, board = quick_board
    assert [row["method_id"] for row in board["rows"]] == ["forward-kl", "alpaca"]
    assert board["seeds"] == [0, 1] and board["cells_reused"] == 0
    white, black = board["rows"]
    assert (white["evaluation"], black["evaluation"]) == ("strings", "instructions")
    em = white["metrics"]["exact_match"]
    assert len(em["baseline"]) == len(em["distilled"]) == 2
    assert em["distilled_minus_baseline"]["mean"] == pytest.approx(
        sum(d - b for d, b in zip(em["distilled"], em["baseline"], strict=True)) / 2
    )
    assert em["distilled_interval"]["low"] <= em["distilled_interval"]["mean"] <= em["distilled_interval"]["high"]
    assert white["metrics"]["token_kl_to_teacher"]["better"] == "lower"
    assert white["cost"]["student_steps"] == 40 and white["cost"]["teacher_requests"] is None
    assert black["cost"]["teacher_requests"] > 0 and black["cost"]["warm_start_steps"] == 0


def test_a_second_bench_reuses_every_cell(quick_board: tuple[Path, dict]) -> None:
    folder, board = quick_board
    again = json.loads((folder / "again.json").read_text())
    assert again["cells_reused"] == 4
    assert again["rows"] == board["rows"]


def test_a_code_change_of_one_method_changes_only_its_cells() -> None:
    from reference_impls.registry import get_method

    digests = {m: leaderboard.code_digest(get_method(m).module) for m in ("forward-kl", "reverse-kl", "alpaca")}
    assert digests["forward-kl"] == digests["reverse-kl"]  # one module: word_level.py
    assert digests["forward-kl"] != digests["alpaca"]


def test_leaderboard_prints_the_board_and_its_json(quick_board: tuple[Path, dict]) -> None:
    folder, board = quick_board
    table = runner.invoke(app, ["leaderboard", "--file", str(folder / "board.json")], env={"COLUMNS": "160"})
    assert table.exit_code == 0, table.output
    assert "forward-kl" in table.output and "alpaca" in table.output and "distilled − baseline" in table.output
    as_json = runner.invoke(app, ["leaderboard", "--file", str(folder / "board.json"), "--json"])
    assert json.loads(as_json.output)["rows"] == board["rows"]


def test_a_missing_or_stale_board_says_what_to_run(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["leaderboard", "--file", str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "kdatlas bench" in " ".join(missing.stderr.split())
    (tmp_path / "old.json").write_text(json.dumps({"version": 0, "rows": []}))
    stale = runner.invoke(app, ["leaderboard", "--file", str(tmp_path / "old.json")])
    assert stale.exit_code == 2 and "rerun" in " ".join(stale.stderr.split())


def test_an_unknown_method_is_refused() -> None:
    result = runner.invoke(app, ["bench", "--methods", "forward-kl,nope", "--no-progress"])
    assert result.exit_code == 2 and "no implemented method nope" in " ".join(result.stderr.split())


def test_merge_adds_and_replaces_rows_and_refuses_other_settings(quick_board: tuple[Path, dict]) -> None:
    """`kdatlas bench --methods NEW --merge`: a method added later joins the committed board."""
    _, board = quick_board
    white, black = board["rows"]
    added = {**board, "cells_reused": 2, "rows": [{**white, "method_id": "aaa-new"}, {**black, "cost": {"seconds": 1.0}}]}
    merged = leaderboard.merge_boards(board, added)
    assert [row["method_id"] for row in merged["rows"]] == ["aaa-new", "alpaca", "forward-kl"]
    assert next(r for r in merged["rows"] if r["method_id"] == "alpaca")["cost"] == {"seconds": 1.0}
    assert merged["rows"][2] == white and merged["cells_reused"] == board["cells_reused"] + 2
    other = {**added, "config": {**board["config"], "steps": 999}}
    with pytest.raises(ValueError, match=r"other settings \(steps\).*without --merge"):
        leaderboard.merge_boards(board, other)
