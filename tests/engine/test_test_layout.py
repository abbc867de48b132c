"""The tests mirror the source tree: every method module has its mirrored test file, the one its
entry page links (`kdatlas.site.links.mirror_test_path`), and that file tests the module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kdatlas.site.links import mirror_test_path
from kdatlas.taxonomy import load_taxonomy
from reference_impls.registry import method_modules, registered_methods

REPO = Path(__file__).resolve().parents[2]
METHOD_MODULES = sorted({registration.module for registration in registered_methods().values()})


def _imported_modules(tree: ast.Module) -> set[str]:
    """Every module a test file imports (``from a import b`` counts ``a`` and ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_registered_modules_are_the_method_modules() -> None:
    # A method folder (minillm/) may register from a submodule: its package is the method module.
    packages = {m if m in method_modules() else m.rpartition(".")[0] for m in METHOD_MODULES}
    assert packages == set(method_modules())


@pytest.mark.parametrize("module", METHOD_MODULES)
def test_method_module_has_its_mirrored_test_file(module: str) -> None:
    path = REPO / mirror_test_path(module)
    where = path.relative_to(REPO)
    assert path.is_file(), f"{module} has no {where} (the tests mirror the source tree)"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = _imported_modules(tree)
    assert any(name == module or name.startswith(module + ".") for name in imported), (
        f"{where} does not import {module}"
    )
    tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert tests, f"{where} defines no test"


def test_every_implemented_entry_links_an_existing_test_file() -> None:
    taxonomy, problems = load_taxonomy(REPO)
    assert not problems
    missing = [
        (entry.id, mirror_test_path(entry.implementation.module))
        for entry in taxonomy.entries.values()
        if entry.status.value == "implemented"
        and not (REPO / mirror_test_path(entry.implementation.module)).is_file()
    ]
    assert missing == []
