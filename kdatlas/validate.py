"""Whole-repository validation: every file checked, every cross-reference resolved, all in one pass.

``kdatlas validate [PATH]`` prints each problem as ``file:line: what is wrong — how to fix it``
and exits non-zero if there is any. Nothing here raises for bad data.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from kdatlas.bib import PLACEHOLDER, Bibliography, load_bibliography
from kdatlas.model import Status
from kdatlas.problems import Problem
from kdatlas.taxonomy import BRANCH_FILE, Taxonomy, load_taxonomy


@dataclass
class Report:
    """The loaded data plus every problem found."""

    taxonomy: Taxonomy
    bibliography: Bibliography
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        """True when there is nothing to fix."""
        return not self.problems


def _check_tree(taxonomy: Taxonomy) -> list[Problem]:
    problems = []
    for branch in taxonomy.branches.values():
        if branch.parent and branch.parent not in taxonomy.branches:
            path = taxonomy.files[branch.id]
            problems.append(
                Problem(
                    path,
                    1,
                    f"parent branch '{branch.parent}' has no {BRANCH_FILE}",
                    f"add taxonomy/{branch.parent}/{BRANCH_FILE}",
                )
            )
    for entry in taxonomy.entries.values():
        if entry.branch not in taxonomy.branches:
            problems.append(
                Problem(
                    taxonomy.files[entry.id],
                    taxonomy.line(entry.id, "branch"),
                    f"branch '{entry.branch}' does not exist",
                    f"add taxonomy/{entry.branch}/{BRANCH_FILE} or file the entry under an existing branch",
                )
            )
    return problems


def _check_references(taxonomy: Taxonomy, bibliography: Bibliography) -> list[Problem]:
    problems = []
    known_tags = set(taxonomy.vocabulary.tags) if taxonomy.vocabulary else set()
    former = {old: entry.id for entry in taxonomy.entries.values() for old in entry.former_ids}
    for entry in taxonomy.entries.values():
        path = taxonomy.files[entry.id]
        for index, relation in enumerate(entry.relations):
            line = taxonomy.line(entry.id, "relations", index, "target")
            if relation.target == entry.id:
                problems.append(Problem(path, line, f"'{entry.id}' relates to itself", "remove the relation"))
            elif relation.target in former:
                problems.append(
                    Problem(
                        path,
                        line,
                        f"relation target '{relation.target}' was renamed",
                        f"use '{former[relation.target]}'",
                    )
                )
            elif relation.target not in taxonomy.entries and relation.target not in taxonomy.unparsed:
                problems.append(
                    Problem(
                        path,
                        line,
                        f"relation target '{relation.target}' is not an entry",
                        "fix the id or add the entry (kdatlas list shows the ids)",
                    )
                )
        for index, key in enumerate(entry.papers):
            if key not in bibliography.entries:
                problems.append(
                    Problem(
                        path,
                        taxonomy.line(entry.id, "papers", index),
                        f"BibTeX key '{key}' is not in bib/",
                        "add the entry to a bib/*.bib file (verified metadata) or fix the key",
                    )
                )
        for index, tag in enumerate(entry.tags):
            if known_tags and tag not in known_tags:
                problems.append(
                    Problem(
                        path,
                        taxonomy.line(entry.id, "tags", index),
                        f"tag '{tag}' is not in the vocabulary",
                        "use a tag from taxonomy/vocabulary.yaml or add it there with its meaning",
                    )
                )
        for old in entry.former_ids:
            if old in taxonomy.entries:
                problems.append(
                    Problem(
                        path,
                        taxonomy.line(entry.id, "former_ids"),
                        f"former id '{old}' is in use by another entry",
                        "ids are never reused: pick a new id for the other entry",
                    )
                )
    return problems


def _check_implementations(taxonomy: Taxonomy) -> list[Problem]:
    problems = []
    try:
        from reference_impls.registry import module_for_branch, registered_methods

        methods = registered_methods()
    except Exception as error:  # an import error in a method module must not hide the report
        return [
            Problem(
                taxonomy.root / "reference_impls",
                1,
                f"the method modules fail to import ({type(error).__name__}: {error})",
                "fix the module, then rerun kdatlas validate",
            )
        ]
    for entry in taxonomy.entries.values():
        path = taxonomy.files[entry.id]
        implementation = entry.implementation
        if entry.status is not Status.implemented or implementation is None:
            if entry.id in methods:
                problems.append(
                    Problem(
                        path,
                        taxonomy.line(entry.id, "status"),
                        f"'{entry.id}' is registered in {methods[entry.id].module} but has status '{entry.status.value}'",
                        "set status: implemented and implementation.module",
                    )
                )
            continue
        line = taxonomy.line(entry.id, "implementation", "module")
        package = module_for_branch(entry.branch)
        if not implementation.module.startswith(package + "."):
            problems.append(
                Problem(
                    path,
                    line,
                    f"'{entry.id}' sits on branch '{entry.branch}' but is implemented in "
                    f"{implementation.module}, outside that branch's package {package}",
                    f"move the module into {package.replace('.', '/')}/ (the folders mirror the "
                    "taxonomy), or move the entry to the branch its code belongs to",
                )
            )
        try:
            importlib.import_module(implementation.module)
        except Exception as error:
            problems.append(
                Problem(
                    path,
                    line,
                    f"implementation module '{implementation.module}' does not import ({type(error).__name__}: {error})",
                    "fix the module path or the module",
                )
            )
            continue
        registered = methods.get(entry.id)
        if registered is None:
            problems.append(
                Problem(
                    path,
                    line,
                    f"'{entry.id}' is not registered by {implementation.module}",
                    f'decorate its recipe builder with @register("{entry.id}")',
                )
            )
        elif registered.module != implementation.module:
            problems.append(
                Problem(
                    path,
                    line,
                    f"'{entry.id}' is registered by {registered.module}, not {implementation.module}",
                    f"set implementation.module: {registered.module}",
                )
            )
        for index, dotted in enumerate(implementation.api):
            module_name, _, attribute = dotted.rpartition(".")
            try:
                found = hasattr(importlib.import_module(module_name), attribute)
            except Exception:
                found = False
            if not found:
                problems.append(
                    Problem(
                        path,
                        taxonomy.line(entry.id, "implementation", "api", index),
                        f"API object '{dotted}' does not exist",
                        "give the dotted path of a public function or class",
                    )
                )
    for method_id, registration in methods.items():
        if method_id not in taxonomy.entries:
            problems.append(
                Problem(
                    taxonomy.root / (registration.module.replace(".", "/") + ".py"),
                    1,
                    f"registered method '{method_id}' has no taxonomy entry",
                    f"add taxonomy/<branch>/{method_id}.yaml (kdatlas new method can scaffold it)",
                )
            )
    return problems


def _placeholder_paths(value: object, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Paths of the string values that still hold a `kdatlas new` placeholder."""
    if isinstance(value, str):
        return [path] if PLACEHOLDER in value else []
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _placeholder_paths(item, (*path, key))]
    if isinstance(value, list | tuple):
        return [p for index, item in enumerate(value) for p in _placeholder_paths(item, (*path, index))]
    return []


def _check_placeholders(taxonomy: Taxonomy) -> list[Problem]:
    """Every 'FILL IN' left by `kdatlas new`, in entries and in their implementation modules."""
    problems = []
    for entry in taxonomy.entries.values():
        for path in _placeholder_paths(entry.model_dump(mode="json", exclude_none=True)):
            field = ".".join(str(part) for part in path)
            problems.append(
                Problem(
                    taxonomy.files[entry.id],
                    taxonomy.line(entry.id, *path),
                    f"'{field}' still has the placeholder '{PLACEHOLDER}'",
                    "write the real content (see docs/extend.md), or delete the field if it does not apply",
                )
            )
        if entry.implementation is None:
            continue
        source = taxonomy.root / (entry.implementation.module.replace(".", "/") + ".py")
        if not source.is_file():
            continue  # the import check reports a missing module
        for number, text in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
            if PLACEHOLDER in text:
                problems.append(
                    Problem(
                        source,
                        number,
                        f"implementation of '{entry.id}' still has the placeholder '{PLACEHOLDER}'",
                        "implement it (the paper's equations) and replace the text, then run its tests",
                    )
                )
    return problems


def validate_repository(root: Path, check_implementations: bool = True) -> Report:
    """Load and check the taxonomy and bibliography under ``root``; collects every problem."""
    root = root.resolve()
    taxonomy, problems = load_taxonomy(root)
    bibliography, bib_problems = load_bibliography(root)
    problems += bib_problems
    problems += _check_tree(taxonomy)
    problems += _check_references(taxonomy, bibliography)
    problems += _check_placeholders(taxonomy)
    if check_implementations:
        problems += _check_implementations(taxonomy)
    return Report(taxonomy, bibliography, sorted(set(problems)))
