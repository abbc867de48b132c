"""`kdatlas new`: a scaffolded entry fails validation until filled in, then validates, gets its page
and passes its generated test — all in a throw-away copy of the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdatlas.cli import app
from kdatlas.model import Kind
from kdatlas.scaffold import ScaffoldError, module_name, new_entry
from kdatlas.site.generate import write_pages
from kdatlas.site.links import entry_page
from kdatlas.validate import validate_repository

REPO = Path(__file__).resolve().parents[2]
COPIED = (
    "taxonomy",
    "bib",
    "reference_impls",
    "kdatlas",
    "docs",
    "mkdocs.yml",
    "CITATION.cff",
    "pyproject.toml",
)
runner = CliRunner()


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A minimal copy of the repository that `kdatlas new` may write into."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    (root / "tests").mkdir()
    shutil.copy2(REPO / "tests" / "conftest.py", root / "tests" / "conftest.py")
    return root


def _in_copy(root: Path) -> dict[str, str]:
    # The copy's packages must shadow the installed (editable) ones, for imports and subprocesses.
    return {**os.environ, "PYTHONPATH": str(root), "KDATLAS_CACHE": str(root / ".cache")}


def _run_kdatlas(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kdatlas", *args],
        cwd=root,
        env=_in_copy(root),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _fill_in(root: Path, entry_id: str) -> None:
    """What a contributor does: real text for every placeholder, and a real loss (forward KL)."""
    module = module_name(entry_id)
    entry = root / "taxonomy" / "white-box" / "logits" / f"{entry_id}.yaml"
    text = entry.read_text(encoding="utf-8")
    text = text.replace(
        r"\mathcal{L}(\theta) = FILL IN", r"\mathcal{L}(\theta) = \mathrm{KL}(p \,\|\, q_\theta)"
    )
    text = text.replace("venue: FILL IN (e.g. ICLR 2025, or arXiv)", "venue: arXiv")
    entry.write_text(re.sub(r"FILL IN[^\n]*", "Written by the contributor.", text), encoding="utf-8")

    bib = root / "bib" / "kd.bib"
    bib.write_text(
        bib.read_text(encoding="utf-8").replace("FILL IN Last, First and Last, First", "Doe, Jane"),
        encoding="utf-8",
    )

    implementation = root / "reference_impls" / "white_box" / "logits" / f"{module}.py"
    code = implementation.read_text(encoding="utf-8")
    code = re.sub(
        r"    raise NotImplementedError\(.*\)\n",
        "    return forward_kl(student_logits, teacher_logits, labels, temperature=temperature)\n",
        code,
    )
    code = code.replace(
        "from reference_impls.registry import register",
        "from reference_impls.losses import forward_kl\nfrom reference_impls.registry import register",
    )
    implementation.write_text(code.replace("FILL IN", "Written by the contributor:"), encoding="utf-8")

    test = root / "tests" / "white_box" / "logits" / f"test_{module}.py"
    golden = (
        "    p = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)\n"
        "    q = torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64)\n"
        f"    value = {module}_loss(q.log(), p.log())\n"
        "    assert torch.isclose(value, torch.tensor(0.25 * math.log(2.0), dtype=torch.float64))\n"
    )
    source = test.read_text(encoding="utf-8")
    source = re.sub(r"    # FILL IN.*?pytest\.fail\([^\n]*\)\n", golden, source, flags=re.S)
    test.write_text(source.replace("import pytest\n", "import math\n\nimport pytest\n", 1), encoding="utf-8")


def test_rejects_bad_requests_and_writes_nothing(repo_copy: Path) -> None:
    before = (repo_copy / "bib" / "kd.bib").read_text(encoding="utf-8")
    cases = [
        ("My_KD", "white-box/logits", "kebab-case"),
        ("forward-kl", "white-box/logits", "already used"),
        ("my-kd", "white-box/logit", "Did you mean white-box/logits"),
    ]
    for entry_id, branch, message in cases:
        with pytest.raises(ScaffoldError, match=message):
            new_entry(repo_copy, Kind.method, entry_id, branch, "My KD")
    with pytest.raises(ScaffoldError, match="not an arXiv id"):
        new_entry(repo_copy, Kind.method, "my-kd", "white-box/logits", "My KD", arxiv="abc")
    assert (repo_copy / "bib" / "kd.bib").read_text(encoding="utf-8") == before
    assert not (repo_copy / "taxonomy" / "white-box" / "logits" / "my-kd.yaml").exists()
    result = runner.invoke(
        app,
        [
            "new",
            "method",
            "forward-kl",
            "--branch",
            "white-box/logits",
            "--title",
            "X",
            "--root",
            str(repo_copy),
        ],
    )
    assert result.exit_code == 2 and "already used" in result.stderr


@pytest.mark.slow
def test_new_method_end_to_end(repo_copy: Path) -> None:
    created = _run_kdatlas(
        repo_copy,
        "new",
        "method",
        "my-kd",
        "--branch",
        "white-box/logits",
        "--title",
        "MyKD (toy)",
        "--arxiv",
        "2401.00001",
        "--root",
        str(repo_copy),
    )
    assert created.returncode == 0, created.stderr
    assert "Fill in" in created.stderr and "Next:" in created.stderr
    for path in ("taxonomy/white-box/logits/my-kd.yaml", "reference_impls/white_box/logits/my_kd.py", "tests/white_box/logits/test_my_kd.py"):
        assert (repo_copy / path).is_file(), path

    # Half filled: validation fails, naming each placeholder with its file and line.
    half = _run_kdatlas(repo_copy, "validate", str(repo_copy))
    assert half.returncode == 1
    assert re.search(
        r"taxonomy/white-box/logits/my-kd\.yaml:\d+: 'summary' still has the placeholder",
        half.stdout + half.stderr,
    )
    assert re.search(
        r"bib/kd\.bib:\d+: entry 'my-kd' still has placeholders in: author", half.stdout + half.stderr
    )
    assert re.search(r"reference_impls/white_box/logits/my_kd\.py:\d+: implementation of 'my-kd'", half.stdout + half.stderr)

    _fill_in(repo_copy, "my-kd")
    filled = _run_kdatlas(repo_copy, "validate", str(repo_copy))
    assert filled.returncode == 0, filled.stdout + filled.stderr

    # It appears on the site: its page is generated with the entry's data.
    generated = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; from kdatlas.site.generate import write_pages; "
            f"g = write_pages(Path({str(repo_copy)!r}), Path({str(repo_copy / 'site-md')!r})); "
            "print(len(g.problems))",
        ],
        cwd=repo_copy,
        env=_in_copy(repo_copy),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0 and generated.stdout.strip() == "0", generated.stderr
    page = (repo_copy / "site-md" / entry_page("my-kd")).read_text(encoding="utf-8")
    assert "MyKD (toy)" in page and "reference_impls.white_box.logits.my_kd" in page

    # Its generated tests pass once filled in.
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/white_box/logits/test_my_kd.py"],
        cwd=repo_copy,
        env=_in_copy(repo_copy),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "4 passed" in tests.stdout


def test_the_repository_itself_has_no_placeholders() -> None:
    report = validate_repository(REPO, check_implementations=False)
    assert not [p for p in report.problems if "placeholder" in p.message]
    assert write_pages  # the page writer used above is the one the site uses
