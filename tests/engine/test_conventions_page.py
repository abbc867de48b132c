"""The conventions-and-pitfalls page: every convention guarded by a marked test, and bad markers caught."""

from __future__ import annotations

import shutil
from pathlib import Path

from kdatlas.site.conventions import find_guards, load_conventions, render_conventions_page

REPO = Path(__file__).resolve().parents[2]


def test_every_convention_is_guarded_and_every_marker_is_known() -> None:
    conventions, guards, problems = load_conventions(REPO)
    assert problems == []
    assert {c["id"] for c in conventions} == set(guards)
    for required in ("jsd-beta-direction", "temperature-squared", "cross-entropy-form", "causal-shift",
                     "accumulation-normaliser", "minus-inf-logits", "low-precision-reductions"):  # fmt: skip
        assert guards[required], required
    assert all(peer["url"].startswith("https://github.com/") for c in conventions for peer in c.get("peers", []))


def test_the_page_links_each_guarding_test_to_its_line() -> None:
    conventions, guards, _ = load_conventions(REPO)
    page = render_conventions_page(conventions, guards, "https://example.org/repo/blob/main")
    guard = guards["jsd-beta-direction"][0]
    assert f"[`{guard.path}::{guard.name}`](https://example.org/repo/blob/main/{guard.path}#L{guard.line})" in page
    assert "## Which end of β is forward KL { #jsd-beta-direction }" in page
    source = (REPO / guard.path).read_text().splitlines()
    assert source[guard.line - 1].startswith(f"def {guard.name}(")


def test_an_unguarded_convention_and_an_unknown_marker_are_build_problems(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    shutil.copy(REPO / "tests" / "conventions.yaml", tmp_path / "tests" / "conventions.yaml")
    (tmp_path / "tests" / "test_x.py").write_text(
        'import pytest\n\n@pytest.mark.convention("no-such-rule")\ndef test_x():\n    """Checks nothing real."""\n'
    )
    _, guards, problems = load_conventions(tmp_path)
    assert guards["no-such-rule"][0].summary == "Checks nothing real."
    messages = [p.message for p in problems]
    assert "marker names an unknown convention 'no-such-rule'" in messages
    assert "no test guards convention 'jsd-beta-direction'" in messages
    assert find_guards(tmp_path).keys() == {"no-such-rule"}
