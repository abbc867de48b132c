"""The peers matrix and each entry's "In other frameworks" section, with parity results."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from kdatlas.site.entry import render_entry
from kdatlas.site.frameworks import PARITY_FILE, load_parity, parity_text, render_frameworks_page
from kdatlas.site.generate import load_site

REPO = Path(__file__).resolve().parents[2]
CASES = {"trl-forward-kl": {"id": "trl-forward-kl", "peer": "trl", "version": "9.9", "pass": True, "max_abs_diff": 3e-8, "cases": 4},
         "torchtune-forward-kl": {"id": "torchtune-forward-kl", "peer": "torchtune", "version": "0.6.1", "pass": False,
                                  "max_abs_diff": 0.5, "cases": 2}}  # fmt: skip


def test_the_matrix_marks_implementations_and_parity() -> None:
    site, _ = load_site(REPO)
    page = render_frameworks_page(site.taxonomy, CASES, entry_href=lambda entry_id: f"entries/{entry_id}.md")
    header = next(line for line in page.splitlines() if line.startswith("| method |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    row = next(line for line in page.splitlines() if line.startswith("| [Forward KL"))
    cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|")), strict=True))
    assert cells["TRL"] == "✓=" and cells["torchtune"] == "✓≠" and cells["KDFlow"] == "✓"
    assert "## TRL" in page and "GKDTrainer with beta=0, lmbda=0" in page


def test_an_entry_page_lists_its_peers_with_the_parity_result() -> None:
    site, _ = load_site(REPO)
    page = render_entry(site.taxonomy.entries["forward-kl"], replace(site, parity=CASES))
    assert "## In other frameworks" in page
    assert "✓ equal (trl 9.9, 4 cases, max \\|Δ\\| 3.0e-08)" in page and "✗ differs (torchtune 0.6.1" in page
    assert parity_text(CASES, None) == "—" and parity_text(CASES, "no-such-case") == "not run"


def test_a_damaged_parity_file_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / PARITY_FILE).parent.mkdir(parents=True)
    (tmp_path / PARITY_FILE).write_text(json.dumps({"no": "cases"}))
    cases, problem = load_parity(tmp_path)
    assert cases == {} and "peer_parity.py" in problem
    assert load_parity(tmp_path / "nowhere") == ({}, None)


def test_parity_cases_are_grouped_by_mapping(tmp_path: Path) -> None:
    rows = [{"group": "trl-jsd", "peer": "trl", "peer_version": "1", "pass": True, "max_abs_diff": 1e-7},
            {"group": "trl-jsd", "peer": "trl", "peer_version": "1", "pass": False, "max_abs_diff": None},
            {"group": "liger-jsd", "peer": "liger-kernel", "peer_version": "2", "pass": True, "max_abs_diff": 2e-7}]  # fmt: skip
    (tmp_path / PARITY_FILE).parent.mkdir(parents=True)
    (tmp_path / PARITY_FILE).write_text(json.dumps({"cases": rows}))
    groups, problem = load_parity(tmp_path)
    assert problem is None and groups["trl-jsd"]["cases"] == 2 and not groups["trl-jsd"]["pass"]
    assert groups["liger-jsd"]["pass"] and groups["liger-jsd"]["max_abs_diff"] == 2e-7


def test_every_parity_id_an_entry_names_is_in_the_committed_results() -> None:
    site, _ = load_site(REPO)
    named = {p.parity for e in site.taxonomy.entries.values() for p in e.peers if p.parity}
    assert named and named <= set(site.parity), named - set(site.parity)
    assert all(group["pass"] for group in site.parity.values())
