"""The layout rules of reference_impls/, checked on the source (ast), so they cannot drift.

- Layers: ``losses`` and ``tasks`` at the bottom, then ``core``, ``teachers``, the branch
  packages (``white_box``, ``black_box``) and ``run`` on top. A module imports only its own layer
  and the layers below; the two branch roots never import each other. ``registry`` is the table
  the methods register into (they import its ``register``) and imports none of them statically:
  it finds them by walking the branch packages.
- A method imports another method only along a relation its entry declares (``extends``,
  ``variant-of`` or ``uses``): the coupling is then visible on both pages.
- A method module reads like its paper's algorithm box: at most ``MAX_METHOD_CODE_LINES`` lines of
  code (docstrings, comments and blank lines aside).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kdatlas.taxonomy import load_taxonomy
from reference_impls.registry import method_modules, registered_methods

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "reference_impls"
LAYERS = {"losses": 0, "tasks": 0, "core": 1, "teachers": 2, "white_box": 3, "black_box": 3, "run": 4}
RELATIONS_THAT_ALLOW_AN_IMPORT = {"extends", "variant-of", "uses"}
MAX_METHOD_CODE_LINES = 250


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every reference_impls module ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from reference_impls.tasks import instructions` imports a module, not a name.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in SOURCES and name != "reference_impls"}


def _top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _code_lines(path: Path) -> int:
    source = path.read_text(encoding="utf-8")
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            is_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            if is_docstring and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    return sum(
        1
        for number, line in enumerate(source.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#") and number not in docstrings
    )


def _method_files() -> list[Path]:
    """The file of every method module, and every file of a method package."""
    files = []
    for name in method_modules():
        path = SOURCES[name]
        files += sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]
    return files


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if _top(m) in LAYERS))
def test_a_module_imports_only_its_layer_and_the_layers_below(module: str) -> None:
    layer = _top(module)
    for imported in _imports(SOURCES[module]):
        other = _top(imported)
        if other == "registry":
            assert LAYERS[layer] == LAYERS["white_box"], f"{module} imports the registry: only methods do"
            continue
        assert other in LAYERS, f"{module} imports {imported}, outside the layers"
        assert LAYERS[other] <= LAYERS[layer], (
            f"{module} ({layer}) imports {imported} ({other}), a higher layer: move the shared "
            "piece down, or the importing code up"
        )
        if LAYERS[other] == LAYERS[layer] == LAYERS["white_box"]:
            assert other == layer, f"{module} imports {imported}: the branch roots are independent"
        if LAYERS[layer] == 0:
            assert other == layer, f"{module} imports {imported}: losses and tasks are independent"


def test_the_registry_imports_no_method_statically() -> None:
    assert _imports(SOURCES["reference_impls.registry"]) == set()


def test_a_method_imports_another_method_only_along_a_declared_relation() -> None:
    taxonomy, problems = load_taxonomy(REPO)
    assert not problems
    methods = registered_methods()
    entries_of: dict[str, set[str]] = {}
    for method_id, registration in methods.items():
        entries_of.setdefault(registration.module, set()).add(method_id)
    allowed = {
        (source, relation.target)
        for source in methods
        for relation in taxonomy.entries[source].relations
        if relation.type.value in RELATIONS_THAT_ALLOW_AN_IMPORT
    }
    checked = 0
    for module in entries_of:
        for imported in _imports(SOURCES[module]) & set(entries_of):
            if imported == module:
                continue
            checked += 1
            pairs = {(a, b) for a in entries_of[module] for b in entries_of[imported]}
            assert pairs & allowed, (
                f"{module} imports the method module {imported}, but no entry of it declares "
                f"extends/variant-of/uses {sorted(entries_of[imported])}: declare the relation, or "
                "move the shared code into a `_`-module of the branch"
            )
    assert checked >= 1  # gpt-4-llm → alpaca, reflection-tuning → alpaca, selective → reflection


def test_the_registry_finds_every_method_by_walking_the_branch_packages() -> None:
    # No skip-list: every module under a branch package is a method unless it is `_`-private.
    walked = set(method_modules())
    assert {registration.module for registration in registered_methods().values()} == walked
    assert not any(part.startswith("_") for name in walked for part in name.split("."))


@pytest.mark.parametrize("path", _method_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_method_module_fits_an_algorithm_box(path: Path) -> None:
    lines = _code_lines(path)
    assert lines <= MAX_METHOD_CODE_LINES, (
        f"{path.relative_to(REPO)} has {lines} lines of code (limit {MAX_METHOD_CODE_LINES}): "
        "move plumbing into a shared layer, or split the method into a small folder"
    )
