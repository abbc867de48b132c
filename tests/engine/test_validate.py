"""The validator against planted problems: each must give its clear file:line message, no traceback."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdatlas.validate import validate_repository

REPO = Path(__file__).resolve().parents[2]
MESSAGE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<what>.+) — (?P<fix>.+)$")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the repository's data (taxonomy + bib) to break."""
    shutil.copytree(REPO / "taxonomy", tmp_path / "taxonomy")
    shutil.copytree(REPO / "bib", tmp_path / "bib")
    return tmp_path


def messages(root: Path, check_implementations: bool = False) -> list[str]:
    report = validate_repository(root, check_implementations=check_implementations)
    return [problem.format(root) for problem in report.problems]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"fixture text {old!r} not found in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_repository_is_clean() -> None:
    report = validate_repository(REPO)
    assert [p.format(REPO) for p in report.problems] == []
    assert len(report.taxonomy.entries) >= 15


def find(found: list[str], file_suffix: str, line: int, fragment: str) -> str:
    for message in found:
        match = MESSAGE.match(message)
        assert match, f"not in 'file:line: problem — fix' form: {message}"
        if match["file"].endswith(file_suffix) and int(match["line"]) == line and fragment in message:
            return message
    raise AssertionError(
        f"no message for {file_suffix}:{line} containing {fragment!r} in:\n" + "\n".join(found)
    )


FORWARD_KL = "taxonomy/white-box/logits/forward-kl.yaml"


def line_number(path: Path, startswith: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith(startswith):
            return number
    raise AssertionError(f"{startswith!r} not in {path}")


def test_every_planted_problem_is_reported_in_one_pass(repo: Path) -> None:
    entry = repo / FORWARD_KL
    edit(
        entry,
        "  - type: compared-with\n    target: reverse-kl",
        "  - type: compared-with\n    target: no-such-entry",
    )
    edit(
        entry,
        "papers: [hinton2015distilling, kim2016sequence]",
        "papers: [hinton2015distilling, missing2099key]",
    )
    edit(entry, "tags: [divergence, mean-seeking, soft-targets]", "tags: [divergence, not-a-tag]")
    edit(entry, "kind: objective", "kind: objectiv")
    edit(repo / "taxonomy/white-box/logits/reverse-kl.yaml", "summary: >-", "sumary: >-")
    found = messages(repo)
    # kind typo → the entry does not load; its other problems are reported once it parses.
    find(found, FORWARD_KL, line_number(entry, "kind:"), "'kind' has the value 'objectiv'")
    find(
        found,
        "reverse-kl.yaml",
        line_number(repo / "taxonomy/white-box/logits/reverse-kl.yaml", "sumary"),
        "did you mean 'summary'",
    )
    edit(entry, "kind: objectiv", "kind: objective")
    found = messages(repo)
    find(
        found,
        FORWARD_KL,
        line_number(entry, "target: no-such-entry"),
        "relation target 'no-such-entry' is not an entry",
    )
    find(found, FORWARD_KL, line_number(entry, "papers:"), "BibTeX key 'missing2099key' is not in bib/")
    find(found, FORWARD_KL, line_number(entry, "tags:"), "tag 'not-a-tag' is not in the vocabulary")


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("id: forward-kl", "id: forward-kl-renamed", "does not match the file name"),
        ("branch: white-box/logits", "branch: white-box/hint", "lives in 'white-box/logits'"),
        ("status: implemented", "status: planned", "but an 'implementation' is given"),
        (
            "status: implemented\nimplementation:\n  module: reference_impls.white_box.logits.word_level\n  api: [reference_impls.losses.forward_kl]",
            "status: planned",
            "'status_reason' is empty",
        ),
        ("year: 2016", "year: twenty", "year"),
        ("id: forward-kl", "id: Forward_KL", "kebab-case"),
    ],
)
def test_entry_level_problems(repo: Path, old: str, new: str, fragment: str) -> None:
    edit(repo / FORWARD_KL, old, new)
    found = [m for m in messages(repo) if "forward-kl.yaml" in m]
    assert any(fragment in m for m in found), found
    assert all(MESSAGE.match(m) for m in found)


def test_yaml_syntax_error_points_at_the_line(repo: Path) -> None:
    (repo / FORWARD_KL).write_text("id: forward-kl\nname: [unclosed\nkind: method\n", encoding="utf-8")
    found = [m for m in messages(repo) if "forward-kl.yaml" in m]
    assert len(found) == 1 and "invalid YAML" in found[0]
    assert MESSAGE.match(found[0])["line"] in {"2", "3", "4"}


def test_missing_branch_and_parent(repo: Path) -> None:
    shutil.rmtree(repo / "taxonomy/white-box/hint")
    (repo / "taxonomy/white-box/_branch.yaml").unlink()
    found = messages(repo)
    assert any(
        "white-box/logits/_branch.yaml:1: parent branch 'white-box' has no _branch.yaml" in m for m in found
    ), found


def test_duplicate_id_in_two_folders(repo: Path) -> None:
    shutil.copy(repo / FORWARD_KL, repo / "taxonomy/white-box/hint/forward-kl.yaml")
    found = messages(repo)
    assert any("duplicate id 'forward-kl'" in m for m in found), found


BROKEN_BIB = """
@misc{brokenentry,
  title = {Unclosed
"""


@pytest.mark.parametrize(
    ("bib_text", "fragment"),
    [
        (BROKEN_BIB, "does not parse"),
        (
            "@misc{notitle2020,\n  author = {Doe, Jane},\n  year = {2020},\n  url = {https://example.org}\n}\n",
            "has no title",
        ),
        (
            "@misc{nolocator2020,\n  title = {T},\n  author = {Doe, Jane},\n  year = {2020}\n}\n",
            "no doi, eprint or url",
        ),
        (
            "@misc{hinton2015distilling,\n  title = {Dup},\n  author = {Doe, Jane},\n  year = {2020},\n  url = {https://x.org}\n}\n",
            "duplicate BibTeX key 'hinton2015distilling'",
        ),
        (
            "@misc{noid2020,\n  title = {T},\n  author = {Doe, Jane},\n  year = {2020},\n  url = {https://example.org}\n}\n",
            "entry 'noid2020' has neither an arXiv id nor a DOI",
        ),
        (
            "@misc{arxivlink,\n  title = {T},\n  author = {Doe, Jane},\n  year = {2020},\n  doi = {10.1/x},\n"
            "  url = {https://arxiv.org/abs/2306.08543}\n}\n",
            "links to arXiv but has no eprint",
        ),
        (
            "@misc{badeprint,\n  title = {T},\n  author = {Doe, Jane},\n  year = {2020},\n  eprint = {arXiv:2306},\n}\n",
            "is not an arXiv id",
        ),
        (
            "@misc{baddoi,\n  title = {T},\n  author = {Doe, Jane},\n  year = {2020},\n  doi = {https://doi.org/10.1/x},\n}\n",
            "which is not a DOI",
        ),
        (
            "@misc{stub,\n  title = {T},\n  author = {FILL IN Last, First},\n  year = {2020},\n  eprint = {2306.08543},\n}\n",
            "still has placeholders in: author",
        ),
        (
            "@misc{badyear,\n  title = {T},\n  author = {Doe, Jane},\n  year = {20x5},\n  url = {https://x.org}\n}\n",
            "four-digit year",
        ),
    ],
)
def test_bibliography_problems(repo: Path, bib_text: str, fragment: str) -> None:
    (repo / "bib/zz-broken.bib").write_text(bib_text, encoding="utf-8")
    found = [m for m in messages(repo) if "zz-broken.bib" in m]
    assert any(fragment in m for m in found), found
    assert all(MESSAGE.match(m) for m in found)


def test_a_reference_without_identifiers_may_say_why(repo: Path) -> None:
    (repo / "bib/zz-blog.bib").write_text(
        "@misc{blog2023,\n  title = {T},\n  author = {Doe, Jane},\n  year = {2023},\n"
        "  url = {https://example.org/blog},\n  noidentifier = {blog post}\n}\n",
        encoding="utf-8",
    )
    assert not [m for m in messages(repo) if "zz-blog.bib" in m]


def test_placeholders_in_an_entry_are_reported_with_their_lines(repo: Path) -> None:
    path = repo / "taxonomy/white-box/logits/forward-kl.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("venue: ", "venue: FILL IN ", 1), encoding="utf-8")
    line = next(
        i for i, row in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "FILL IN" in row
    )
    found = [m for m in messages(repo) if "placeholder" in m]
    assert found == [
        f"taxonomy/white-box/logits/forward-kl.yaml:{line}: 'venue' still has the placeholder 'FILL IN' — "
        "write the real content (see docs/extend.md), or delete the field if it does not apply"
    ]


def test_implementation_problems(repo: Path) -> None:
    edit(repo / FORWARD_KL, "module: reference_impls.white_box.logits.word_level", "module: reference_impls.not_there")
    edit(
        repo / "taxonomy/white-box/logits/reverse-kl.yaml",
        "api: [reference_impls.losses.reverse_kl]",
        "api: [reference_impls.losses.no_such_function]",
    )
    found = messages(repo, check_implementations=True)
    assert any(
        "forward-kl.yaml" in m and "'reference_impls.not_there' does not import" in m for m in found
    ), found
    assert any(
        "reverse-kl.yaml" in m and "'reference_impls.losses.no_such_function' does not exist" in m
        for m in found
    ), found


def test_registered_method_without_entry(repo: Path) -> None:
    (repo / "taxonomy/white-box/logits/adaptive-kl.yaml").unlink()
    found = messages(repo, check_implementations=True)
    assert any("registered method 'adaptive-kl' has no taxonomy entry" in m for m in found), found


def test_cli_exit_status_and_no_traceback(repo: Path) -> None:
    (repo / FORWARD_KL).write_text(":\n  - ][\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "kdatlas", "validate", str(repo)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "forward-kl.yaml:" in result.stdout


def test_cli_validate_clean_repo_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kdatlas", "validate", str(REPO)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems" in result.stderr


def test_an_implementation_outside_its_branch_package_is_reported(repo: Path) -> None:
    # The folders mirror the taxonomy: forward-kl moved to white-box/hint while its code stays in
    # reference_impls/white_box/logits/ must be reported, with both ways to fix it.
    moved = repo / "taxonomy/white-box/hint/forward-kl.yaml"
    (repo / FORWARD_KL).rename(moved)
    edit(moved, "branch: white-box/logits", "branch: white-box/hint")
    found = [m for m in messages(repo, check_implementations=True) if "outside that branch's package" in m]
    assert len(found) == 1, found
    assert found[0].startswith("taxonomy/white-box/hint/forward-kl.yaml:")
    assert "reference_impls.white_box.logits.word_level" in found[0]
    assert "reference_impls/white_box/hint/" in found[0]


BILLION_LAUGHS = """\
# yaml-language-server: $schema=../../schema/entry.schema.json
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_anchors_and_aliases_are_refused_at_once_with_their_line(repo: Path) -> None:
    import time

    (repo / FORWARD_KL).write_text(BILLION_LAUGHS, encoding="utf-8")
    started = time.perf_counter()
    found = messages(repo)
    assert time.perf_counter() - started < 10  # nothing was expanded (it took minutes and GBs)
    assert any(
        m.startswith("taxonomy/white-box/logits/forward-kl.yaml:2: YAML anchor 'a' is not allowed") for m in found
    ), found


def test_a_single_alias_is_refused_too(repo: Path) -> None:
    path = repo / FORWARD_KL
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "extra: &x 1\nagain: *x\n", encoding="utf-8")
    found = [m for m in messages(repo) if "is not allowed in kdatlas data" in m]
    assert found and found[0].startswith("taxonomy/white-box/logits/forward-kl.yaml:")
