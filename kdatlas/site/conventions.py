"""The "Conventions and pitfalls" page, generated from the tests that guard each convention.

Conventions are data (``tests/conventions.yaml``: a rule, the pitfall, public cases where a peer
framework got it wrong); the tests that guard one carry ``@pytest.mark.convention("<id>")``. The
generator reads the test files with `ast` (nothing is imported or run) and lists, per
convention, its guarding tests with the first line of their docstrings. A convention that no test
guards, or a marker naming no convention, is a build problem: the page can only say what a test
checks.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdatlas.problems import Problem
from kdatlas.site.render import render

CONVENTIONS_FILE = Path("tests") / "conventions.yaml"
CONVENTIONS_PAGE = "pitfalls.md"


@dataclass(frozen=True)
class Guard:
    """A test that guards a convention."""

    path: str  # repository-relative
    name: str
    line: int
    summary: str


def _marker_id(decorator: ast.expr) -> str | None:
    """The id of ``@pytest.mark.convention("id")``, else ``None``."""
    if not (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)):
        return None
    func = decorator.func
    if func.attr != "convention" or not (isinstance(func.value, ast.Attribute) and func.value.attr == "mark"):
        return None
    if len(decorator.args) == 1 and isinstance(decorator.args[0], ast.Constant) and isinstance(decorator.args[0].value, str):
        return decorator.args[0].value
    return None


def find_guards(root: Path) -> dict[str, list[Guard]]:
    """Every marked test under ``root/tests``, by convention id, in file and line order."""
    guards: dict[str, list[Guard]] = {}
    for path in sorted((root / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for decorator in node.decorator_list:
                convention = _marker_id(decorator)
                if convention is not None:
                    doc = (ast.get_docstring(node) or "").strip().splitlines()
                    guards.setdefault(convention, []).append(
                        Guard(path.relative_to(root).as_posix(), node.name, node.lineno, doc[0] if doc else "")
                    )
    for found in guards.values():
        found.sort(key=lambda g: (g.path, g.line))
    return guards


def load_conventions(root: Path) -> tuple[list[dict[str, Any]], dict[str, list[Guard]], list[Problem]]:
    """The conventions, their guards and what is wrong (unguarded conventions, unknown markers)."""
    path = root / CONVENTIONS_FILE
    if not path.exists():
        return [], {}, []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        return [], {}, [Problem(path, 1, f"not valid YAML ({error})", "fix the conventions file")]
    conventions = data.get("conventions", []) if isinstance(data, dict) else []
    guards = find_guards(root)
    problems = []
    known = {c.get("id") for c in conventions}
    for convention in conventions:
        missing = [k for k in ("id", "title", "rule", "pitfall") if not convention.get(k)]
        if missing:
            problems.append(Problem(path, 1, f"convention {convention.get('id', '?')!r} lacks {', '.join(missing)}", "add the fields"))
        elif convention["id"] not in guards:
            problems.append(Problem(path, 1, f"no test guards convention {convention['id']!r}",
                                    f'mark the tests that check it with @pytest.mark.convention("{convention["id"]}")'))  # fmt: skip
    for convention_id, found in guards.items():
        if convention_id not in known:
            for guard in found:
                problems.append(Problem(root / guard.path, guard.line, f"marker names an unknown convention {convention_id!r}",
                                        f"add it to {CONVENTIONS_FILE.as_posix()} or fix the id"))  # fmt: skip
    return conventions, guards, problems


def render_conventions_page(conventions: list[dict[str, Any]], guards: dict[str, list[Guard]], source_url: str) -> str:
    """The page: per convention its rule, the pitfall, peers' public cases and the guarding tests."""
    return render("pitfalls.md.j2", conventions=conventions, guards=guards, source_url=source_url.rstrip("/"))
