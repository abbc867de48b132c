"""Claims with verdicts: the committed claims file, bad files, and the verdict rules on known cells."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdatlas import claims as claims_module
from kdatlas.bib import load_bibliography
from kdatlas.claims import (
    Arm,
    Check,
    Claim,
    ClaimsError,
    evaluate_claims,
    load_claims,
    read_results,
    write_results,
)
from reference_impls.registry import registered_methods

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_claims_name_real_papers_methods_and_options() -> None:
    from kdatlas.runner import build_recipe

    seeds, claims = load_claims()
    assert seeds >= 3 and len(claims) >= 10
    bibliography, _ = load_bibliography(REPO)
    for claim in claims:
        assert claim.paper in bibliography.entries, claim.id
        arms = [arm for check in claim.checks for arm in (check.a, check.b)]
        arms += [Arm(m, run={"student_family": f}) for m in claim.methods for f in claim.families]
        for arm in arms:
            assert arm.method in registered_methods(), (claim.id, arm.method)
            build_recipe(arm.method, arm.set)  # every override names a real hyper-parameter


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "claims.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("version: 1\nclaims: [{id: x, paper: p, where: w, statement: s}]", "missing test"),
        ("version: 1\nclaims: [{id: x, paper: p, where: w, statement: s, test: t}]", "at least one check"),
        (
            "version: 1\nclaims: [{id: x, paper: p, where: w, statement: s, test: t, checks: "
            "[{a: {method: m, sett: {}}, b: {method: m}, metric: e, expect: a}]}]",
            "unknown arm key(s) sett",
        ),
        (
            "version: 1\nclaims: [{id: x, paper: p, where: w, statement: s, test: t, checks: "
            "[{a: {method: m}, b: {method: m}, metric: e, expect: c}]}]",
            "expect: a",
        ),
        ("version: 2\nclaims: []", "version: 1"),
        ("version: 1\nclaims: [\n", "not valid YAML"),
        ("version: 1\nclaims: [{id: x, paper: p, where: w, statement: s, test: t, kind: family}]", "needs `methods`"),
    ],
)
def test_a_bad_claims_file_says_what_is_wrong(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ClaimsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_claims(_write(tmp_path, body))


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    with pytest.raises(ClaimsError, match="not valid YAML"):
        load_claims(_write(tmp_path, "version: 1\nclaims: !!python/object/apply:os.system ['true']\n"))


# Fake cells: per (method, overrides) and seed, the metrics of the distilled student and baseline.
VALUES = {
    ("up", ""): [0.50, 0.52, 0.51],
    ("down", ""): [0.40, 0.41, 0.43],
    ("noisy", ""): [0.60, 0.30, 0.50],
}


def _fake_cell(method_id: str, seed: int, config: Any, *, overrides=None, source=None, run=None) -> dict:
    family = getattr(config, "student_family", "llama")
    value = VALUES[(method_id, "")][seed]
    if family == "gpt2":  # the order of up and down flips in the other family
        value = {"up": 0.40, "down": 0.50, "noisy": 0.45}[method_id] + seed * 0.01
    return {"metrics": {"distilled": {"exact_match": value, "token_kl_to_teacher": 1 - value},
                        "baseline": {"exact_match": 0.2, "token_kl_to_teacher": 0.8}}}  # fmt: skip


def _claim(*checks: Check) -> Claim:
    return Claim("c", "p", "w", "s", "t", checks=checks)


@pytest.fixture
def fake_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(claims_module, "run_cell", _fake_cell)


def test_verdicts_follow_the_paired_interval_and_the_metric_direction(fake_cells: None) -> None:
    up, down, noisy = Arm("up"), Arm("down"), Arm("noisy")
    cases = {
        "reproduced": Check(up, down, "exact_match", "a"),
        "not reproduced": Check(up, down, "exact_match", "b"),
        "inconclusive": Check(noisy, up, "exact_match", "a"),
    }
    for expected, check in cases.items():
        result = evaluate_claims([_claim(check)], range(3), progress=False)["claims"][0]
        assert result["verdict"] == expected and result["checks"][0]["verdict"] == expected
    # Lower is better for a distance: up (0.50 → KL 0.50) beats down (KL 0.59).
    lower = evaluate_claims([_claim(Check(up, down, "token_kl_to_teacher", "a"))], range(3), progress=False)
    assert lower["claims"][0]["verdict"] == "reproduced"
    # The baseline role reads the baseline of the same cells.
    versus_baseline = evaluate_claims([_claim(Check(up, Arm("up", role="baseline"), "exact_match", "a"))], range(3), progress=False)
    assert versus_baseline["claims"][0]["checks"][0]["b_values"] == [0.2, 0.2, 0.2]


def test_a_claim_needs_every_check(fake_cells: None) -> None:
    up, down, noisy = Arm("up"), Arm("down"), Arm("noisy")
    mixed = _claim(Check(up, down, "exact_match", "a"), Check(noisy, up, "exact_match", "a"))
    assert evaluate_claims([mixed], range(3), progress=False)["claims"][0]["verdict"] == "inconclusive"
    failed = _claim(Check(up, down, "exact_match", "a"), Check(up, down, "exact_match", "b"))
    assert evaluate_claims([failed], range(3), progress=False)["claims"][0]["verdict"] == "not reproduced"


def test_a_family_claim_compares_the_bests_of_each_family(fake_cells: None) -> None:
    claim = Claim("f", "p", "w", "s", "t", kind="family", methods=("up", "down"), families=("llama", "gpt2"), metric="exact_match")
    result = evaluate_claims([claim], range(3), progress=False)["claims"][0]
    assert result["best"] == {"llama": "up", "gpt2": "down"} and result["verdict"] == "reproduced"
    same = Claim("f", "p", "w", "s", "t", kind="family", methods=("up", "down"), families=("llama",), metric="exact_match")
    assert evaluate_claims([same], range(3), progress=False)["claims"][0]["verdict"] == "not reproduced"


def test_a_missing_metric_names_what_the_cell_reports(fake_cells: None) -> None:
    with pytest.raises(ClaimsError, match="no metric 'rouge_l'"):
        evaluate_claims([_claim(Check(Arm("up"), Arm("down"), "rouge_l", "a"))], range(3), progress=False)


def test_results_of_a_subset_are_merged_into_the_file(fake_cells: None, tmp_path: Path) -> None:
    path = tmp_path / "claims.json"
    both = [Claim(i, "p", "w", "s", "t", checks=(Check(Arm("up"), Arm("down"), "exact_match", "a"),)) for i in ("one", "two")]
    write_results(evaluate_claims(both, range(3), progress=False), path)
    flipped = Claim("two", "p", "w", "s", "t", checks=(Check(Arm("up"), Arm("down"), "exact_match", "b"),))
    write_results(evaluate_claims([flipped], range(3), progress=False), path, only=True)
    verdicts = {c["id"]: c["verdict"] for c in read_results(path)["claims"]}
    assert verdicts == {"one": "reproduced", "two": "not reproduced"}
    path.write_text(json.dumps({"version": 0}))
    with pytest.raises(ClaimsError, match="rerun"):
        read_results(path)


def test_the_claims_page_shows_verdicts_evidence_and_plots(fake_cells: None) -> None:
    from kdatlas.site.claims import render_claims_page

    tested = Claim("tested", "p", "the abstract", "A beats B.", "a vs b", checks=(Check(Arm("up"), Arm("down"), "exact_match", "a"),))
    family = Claim("family", "p", "w", "s", "t", kind="family", methods=("up", "down"), families=("llama", "gpt2"), metric="exact_match")
    untested = Claim("untested", "p", "w", "s", "t", checks=(Check(Arm("up"), Arm("down"), "exact_match", "a"),))
    results = evaluate_claims([tested, family], range(3), progress=False)
    page = render_claims_page(results, [tested, family, untested], cite=lambda key: f"[{key}](link)")
    assert "2 reproduced, 0 not\nreproduced, 0 inconclusive" in page
    assert "**Claim** ([p](link), the abstract): A beats B." in page and "kdatlas claims --run --only tested" in page
    assert "| exact_match (higher is better; expected: a better) | up | down | 0.5, 0.52, 0.51 |" in page
    assert "llama → `up`; gpt2 → `down`" in page
    assert page.count("<svg") == 2 and "Not run yet." in page


def test_llms_txt_lists_every_entry_with_its_command_and_row() -> None:
    from dataclasses import replace

    from kdatlas.leaderboard import summarise
    from kdatlas.site.generate import load_site
    from kdatlas.site.llms import render_llms_txt
    from tests.engine.test_leaderboard_pages import _cell

    site, _ = load_site(REPO)
    board = {"rows": [summarise("forward-kl", [_cell("forward-kl", s, 0.2, 0.25) for s in range(3)])]}
    text = render_llms_txt(replace(site, board=board))
    assert text.startswith("# kdatlas\n\n> ")
    assert all(f"(`{entry_id}`)" in text for entry_id in site.taxonomy.entries)
    line = next(line for line in text.splitlines() if "(`forward-kl`)" in line)
    assert "Run: `kdatlas run forward-kl`." in line and "Leaderboard (3 seeds, strings suite): exact match 0.250" in line


def test_the_claims_command_prints_verdicts_and_refuses_unknown_ids(fake_cells: None, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kdatlas.cli import app

    path = tmp_path / "claims.json"
    claim = Claim("tested", "p", "w", "s", "t", checks=(Check(Arm("up"), Arm("down"), "exact_match", "a"),))
    write_results(evaluate_claims([claim], range(3), progress=False), path)
    runner = CliRunner()
    table = runner.invoke(app, ["claims", "--file", str(path)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "tested" in table.output and "reproduced" in table.output
    as_json = runner.invoke(app, ["claims", "--file", str(path), "--json"])
    assert json.loads(as_json.output)["claims"][0]["verdict"] == "reproduced"
    missing = runner.invoke(app, ["claims", "--file", str(tmp_path / "none.json")])
    assert missing.exit_code != 0 and "kdatlas claims --run" in missing.output
    unknown = runner.invoke(app, ["claims", "--run", "--only", "no-such-claim", "--file", str(path)])
    assert unknown.exit_code != 0 and "no claim no-such-claim" in unknown.output
