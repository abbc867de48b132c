"""`kdatlas new`: a scaffolded entry fails validation until filled in, then validates, gets its page
and passes its generated test — all in a throw-away copy of the repository."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kdatlas.cli import app
from kdatlas.cli.author import NewShape
from kdatlas.model import Kind
from kdatlas.scaffold import SHAPES, Scaffold, ScaffoldError, module_name, new_entry
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
    for name in ("__init__.py", "conftest.py"):
        shutil.copy2(REPO / "tests" / name, root / "tests" / name)
    # The black-box tests run their pipeline against the oracle teacher of tests/support.
    support = root / "tests" / "support"
    shutil.copytree(REPO / "tests" / "support", support, ignore=shutil.ignore_patterns("__pycache__"))
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


@dataclass(frozen=True)
class FillIn:
    """What a contributor writes into a scaffolded module and its test: here, a trivial version
    that works (``${module}`` and ``${classname}`` as in the templates)."""

    code: str  # replaces the module's `raise NotImplementedError(...)`, at its indentation
    test: str  # replaces the test's FILL IN block (its comment and its pytest.fail)
    code_import: str = ""  # a line added to the module's imports
    test_import: str = ""  # a line added to the test's imports


FORWARD_KL = "from reference_impls.losses import forward_kl\n"
FILL_INS = {
    "logits": FillIn(
        code="return forward_kl(student_logits, teacher_logits, labels, temperature=temperature)\n",
        code_import=FORWARD_KL,
        test=(
            "    p = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)\n"
            "    q = torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64)\n"
            "    value = ${module}_loss(q.log(), p.log())\n"
            "    assert torch.isclose(value, torch.tensor(0.25 * math.log(2.0), dtype=torch.float64))\n"
        ),
        test_import="import math\n",
    ),
    "step": FillIn(
        code="return forward_kl(student_logits, teacher_logits, labels, temperature=self.temperature)\n",
        code_import=FORWARD_KL,
        test=(
            "    student, teacher = _models()\n"
            "    batch = _batch()\n"
            '    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}\n'
            "    with torch.no_grad():\n"
            "        value = ${classname}Step()(student, teacher, batch, None)\n"
            "        student_logits = student(**inputs).logits[:, :-1].double()\n"
            "        teacher_logits = teacher(**inputs).logits[:, :-1].double()\n"
            "    teacher_probs = teacher_logits.softmax(-1)\n"
            "    kl = (teacher_probs * (teacher_probs.log() - student_logits.log_softmax(-1))).sum(-1)\n"
            '    expected = kl[batch["labels"][:, 1:] != -100].mean()\n'
            "    assert torch.isclose(value.double(), expected, rtol=1e-4)\n"
        ),
    ),
    "feature": FillIn(
        code="squared = (student_features - teacher_features).pow(2).mean(-1)  # [batch, seq]\n"
        "return squared[mask].mean()\n",
        test="    assert torch.isclose(value, torch.tensor(0.5, dtype=torch.float64))\n",
    ),
    "pipeline": FillIn(
        code="return completion.text.strip()\n",
        test='    assert parse_answer(Completion(" cba ", "stop")) == "cba"\n',
    ),
}
# Where each shape is scaffolded: white-box/hint has no package yet, so its first method creates it.
SHAPE_CASES = {
    "logits": ("white-box/logits", "toy-logits"),
    "step": ("white-box/logits", "toy-step"),
    "feature": ("white-box/hint", "toy-feature"),
    "pipeline": ("black-box/instruction-following", "toy-pipeline"),
}
RAISE = re.compile(r"^( *)raise NotImplementedError\((?:[^()]|\([^()]*\))*\)\n", re.M)
TEST_FILL_IN = re.compile(r"    # FILL IN.*?pytest\.fail\([^\n]*\)\n", re.S)


def _fill_in(root: Path, entry_id: str, branch: str = "white-box/logits", shape: str = "logits") -> None:
    """What a contributor does: real text for every placeholder, a real loss or filter, a real test."""
    module = module_name(entry_id)
    fill = FILL_INS[shape]
    names = {"module": module, "classname": "".join(part.capitalize() for part in module.split("_"))}

    entry = root / "taxonomy" / branch / f"{entry_id}.yaml"
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

    package = Path(*branch.replace("-", "_").split("/"))
    implementation = root / "reference_impls" / package / f"{module}.py"
    code = implementation.read_text(encoding="utf-8")
    code, replaced = RAISE.subn(
        lambda found: "".join(found.group(1) + line for line in fill.code.splitlines(keepends=True)), code
    )
    assert replaced == 1, "the skeleton has one NotImplementedError to replace"
    register = "from reference_impls.registry import register\n"
    code = code.replace(register, fill.code_import + register)
    implementation.write_text(code.replace("FILL IN", "Written by the contributor:"), encoding="utf-8")

    test = root / "tests" / package / f"test_{module}.py"
    golden = string.Template(fill.test).substitute(names)
    source, replaced = TEST_FILL_IN.subn(golden, test.read_text(encoding="utf-8"))
    assert replaced == 1, "the generated test has one FILL IN block"
    future = "from __future__ import annotations\n\n"
    source = source.replace(future, future + fill.test_import, 1)  # first of the standard library
    test.write_text(source, encoding="utf-8")


def _builder_defaults(source: str) -> dict[str, object]:
    """The keyword defaults of the registered builder in a module's source."""
    for node in ast.walk(ast.parse(source)):
        registered = isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Call) and getattr(d.func, "id", "") == "register" for d in node.decorator_list
        )
        if registered:
            named = node.args.args[len(node.args.args) - len(node.args.defaults) :]
            return {a.arg: ast.literal_eval(d) for a, d in zip(named, node.args.defaults, strict=True)}
    raise AssertionError("no registered builder")


def _entry(made: Scaffold) -> dict:
    return yaml.safe_load(made.entry_file.read_text(encoding="utf-8"))


def _lint(root: Path, *paths: Path) -> None:
    """The files as the repository's linter sees them (its config is copied with the repository)."""
    if importlib.util.find_spec("ruff") is None:
        return
    checked = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", *map(str, paths)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


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

    # Its generated test, filled in, passes: test_each_shape_passes_its_own_test_once_filled_in.


def test_the_repository_itself_has_no_placeholders() -> None:
    report = validate_repository(REPO, check_implementations=False)
    assert not [p for p in report.problems if "placeholder" in p.message]
    assert write_pages  # the page writer used above is the one the site uses


def test_the_cli_offers_every_shape() -> None:
    assert [shape.value for shape in NewShape] == list(SHAPES)


@pytest.mark.parametrize(
    ("branch", "shape", "fragments"),
    [
        ("white-box/logits", "pipeline", ["does not fit", "--shape logits, step or feature", "black-box"]),
        ("white-box/hint", "pipeline", ["does not fit", "teacher model"]),
        ("black-box/instruction-following", "logits", ["does not fit", "--shape pipeline", "teacher's text"]),
        ("black-box/cot", "step", ["does not fit", "use --shape pipeline"]),
        ("black-box/icl", "feature", ["does not fit", "use --shape pipeline"]),
        ("future-directions", None, ["no implementation fits", "--no-implementation"]),
        ("white-box/logits", "hint", ["unknown shape 'hint'", "logits, step, feature, pipeline"]),
    ],
)
def test_a_shape_that_does_not_fit_the_branch_is_refused(
    repo_copy: Path, branch: str, shape: str | None, fragments: list[str]
) -> None:
    before = (repo_copy / "bib" / "kd.bib").read_text(encoding="utf-8")
    with pytest.raises(ScaffoldError) as refused:
        new_entry(repo_copy, Kind.method, "my-kd", branch, "My KD", shape=shape)
    for fragment in fragments:
        assert fragment in str(refused.value)
    assert (repo_copy / "bib" / "kd.bib").read_text(encoding="utf-8") == before
    assert not (repo_copy / "taxonomy" / branch / "my-kd.yaml").exists()


def test_a_shape_needs_an_implementation(repo_copy: Path) -> None:
    with pytest.raises(ScaffoldError, match="--no-implementation"):
        new_entry(repo_copy, Kind.method, "my-kd", "white-box/logits", "My KD", shape="step", implementation=False)
    with pytest.raises(ScaffoldError, match="applies to methods and objectives"):
        new_entry(repo_copy, Kind.evaluation, "my-study", "evaluation", "My study", shape="logits")


def test_the_cli_refuses_a_shape_that_does_not_fit(repo_copy: Path) -> None:
    args = ["new", "method", "my-kd", "--branch", "white-box/logits", "--title", "X", "--root", str(repo_copy)]
    result = runner.invoke(app, [*args, "--shape", "pipeline"])
    assert result.exit_code == 2 and "does not fit the branch 'white-box/logits'" in result.stderr
    assert runner.invoke(app, [*args, "--shape", "hint"]).exit_code == 2  # not a choice


def test_the_default_shape_follows_the_branch(repo_copy: Path) -> None:
    white = new_entry(repo_copy, Kind.method, "my-kd", "white-box/logits", "My KD")
    black = new_entry(repo_copy, Kind.method, "my-pipe", "black-box/cot", "My pipeline")
    planned = new_entry(repo_copy, Kind.method, "my-plan", "black-box/cot", "Planned", implementation=False)
    assert (white.shape, black.shape, planned.shape) == (SHAPES["logits"], SHAPES["pipeline"], None)
    assert "def my_kd_loss(" in white.implementation.read_text(encoding="utf-8")
    assert "TextPipeline(build)" in black.implementation.read_text(encoding="utf-8")
    # The first method of a branch without a package creates it, for the code and for its test.
    assert (repo_copy / "reference_impls" / "black_box" / "cot" / "__init__.py").is_file()
    assert (repo_copy / "tests" / "black_box" / "cot" / "__init__.py").is_file()
    access = [_entry(made)["teacher_access"] for made in (white, black, planned)]
    assert access == ["logits", "text", "text"]
    # Editors find the schema from the first line (a `$` in a template must be doubled).
    first_line = white.entry_file.read_text(encoding="utf-8").splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=../../schema/entry.schema.json"


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_shape_passes_its_own_test_once_filled_in(repo_copy: Path, shape: str) -> None:
    branch, entry_id = SHAPE_CASES[shape]
    made = new_entry(repo_copy, Kind.method, entry_id, branch, f"Toy {shape}", "2401.00001", shape=shape)
    assert made.implementation is not None and made.test is not None
    source = made.implementation.read_text(encoding="utf-8")

    # The entry describes the module: its teacher access, its API, the builder's hyper-parameters.
    entry = _entry(made)
    assert entry["teacher_access"] == SHAPES[shape].teacher_access
    defined = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    assert {api.rpartition(".")[2] for api in entry["implementation"]["api"]} <= defined
    assert {h["name"]: h["default"] for h in entry["hyperparameters"]} == _builder_defaults(source)
    assert "hyperparameters=" not in source  # the registry records them from the signature

    # Every FILL IN line of the module is reported, and the skeleton is lint-clean as written.
    report = validate_repository(repo_copy, check_implementations=False)
    reported = {p.line for p in report.problems if p.path.resolve() == made.implementation.resolve()}
    assert reported == {n for n, line in enumerate(source.splitlines(), 1) if "FILL IN" in line}
    assert reported
    _lint(repo_copy, made.implementation, made.test)

    _fill_in(repo_copy, entry_id, branch, shape)
    validated = _run_kdatlas(repo_copy, "validate", str(repo_copy))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    _lint(repo_copy, made.implementation, made.test)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(made.test)],
        cwd=repo_copy,
        env=_in_copy(repo_copy),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert re.search(r"\d+ passed", tests.stdout) and not re.search(r"failed|skipped|error", tests.stdout)
