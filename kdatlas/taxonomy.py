"""Load the taxonomy tree from ``taxonomy/``: branches, entries and the tag vocabulary.

Layout::

    taxonomy/
      vocabulary.yaml              controlled tags
      schema/*.schema.json         exported from kdatlas.model (for editors)
      white-box/_branch.yaml       a branch: id = folder path, name, description
      white-box/logits/_branch.yaml
      white-box/logits/forward-kl.yaml   an entry: file name = id

Loading never raises for bad data: every file that cannot be read or does not match the model
becomes a `kdatlas.problems.Problem` and the rest still loads, so one pass reports all.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from kdatlas.model import Branch, Entry, Vocabulary
from kdatlas.problems import Problem
from kdatlas.yamlio import PathKey, YamlLoadError, line_of, load_yaml_with_lines

TAXONOMY_DIR = "taxonomy"
BRANCH_FILE = "_branch.yaml"
VOCABULARY_FILE = "vocabulary.yaml"


@dataclass
class Taxonomy:
    """The loaded tree. Only files that passed per-file validation are in it."""

    root: Path
    branches: dict[str, Branch] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # entry id or branch id → its YAML file
    lines: dict[str, dict[PathKey, int]] = field(default_factory=dict)  # entry id → value lines
    vocabulary: Vocabulary | None = None
    unparsed: set[str] = field(default_factory=set)  # ids (file stems) of entry files that failed to load

    @property
    def directory(self) -> Path:
        """The ``taxonomy/`` folder."""
        return self.root / TAXONOMY_DIR

    def line(self, entry_id: str, *path: str | int) -> int:
        """Line of a value inside an entry's file (for messages)."""
        return line_of(self.lines.get(entry_id, {}), tuple(path))

    def children(self, branch_id: str | None) -> list[Branch]:
        """Direct sub-branches of ``branch_id`` (None: the top level), in display order."""
        kids = [b for b in self.branches.values() if b.parent == branch_id]
        return sorted(kids, key=lambda b: (b.order, b.name))

    def entries_in(self, branch_id: str, recursive: bool = False) -> list[Entry]:
        """Entries filed directly in a branch (or anywhere below it), sorted by year then name."""
        found = [
            e
            for e in self.entries.values()
            if e.branch == branch_id or (recursive and e.branch.startswith(branch_id + "/"))
        ]
        return sorted(found, key=lambda e: (e.year, e.name.lower()))

    def walk(self, branch_id: str | None = None) -> Iterator[Branch]:
        """Depth-first walk of the branches in display order."""
        for child in self.children(branch_id):
            yield child
            yield from self.walk(child.id)

    def ordered_entries(self) -> list[Entry]:
        """All entries in tree order (branch walk order, then year, then name)."""
        ordered: list[Entry] = []
        for branch in self.walk():
            ordered.extend(self.entries_in(branch.id))
        return ordered


def _pydantic_problems(
    path: Path, lines: dict[PathKey, int], error: ValidationError, model: type[BaseModel]
) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        kind = item["type"]
        where = ".".join(str(part) for part in loc) or "(file)"
        if kind == "missing":
            message, fix = (
                f"missing field '{where}'",
                f"add '{loc[-1]}:' (see taxonomy/schema for what it holds)",
            )
        elif kind == "extra_forbidden":
            known = list(model.model_fields) if len(loc) == 1 else []
            guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean '{guess[0]}'?" if guess else "remove it or check the spelling"
            message, fix = f"unknown field '{where}'", hint
        elif kind == "enum":
            expected = item.get("ctx", {}).get("expected", "")
            message, fix = (
                f"'{where}' has the value {item.get('input')!r}, which is not allowed",
                f"use one of {expected}",
            )
        elif kind == "string_pattern_mismatch":
            message = f"'{where}' = {item.get('input')!r} is not in the required form"
            fix = "use lower-case kebab-case (e.g. 'forward-kl'; branches like 'white-box/logits'; modules like 'reference_impls.x')"
        elif kind == "value_error":
            text = str(item.get("msg", "")).removeprefix("Value error, ")
            message, _, fix = text.partition(" — ")
            fix = fix or "see the field descriptions in taxonomy/schema"
            # Model-level rules name their field first ("status is ..."): point at that field's line.
            first_word = message.split(" ", 1)[0]
            if not loc and first_word in model.model_fields:
                loc = (first_word,)
        else:
            message = f"'{where}': {item['msg']}"
            fix = "see the field descriptions in taxonomy/schema"
        problems.append(Problem(path, line_of(lines, loc), message, fix))
    return problems


def parse_file(path: Path, model: type[BaseModel]) -> tuple[Any, dict[PathKey, int], list[Problem]]:
    """Load ``path`` and validate it against ``model``; returns (instance or None, lines, problems)."""
    try:
        data, lines = load_yaml_with_lines(path)
    except YamlLoadError as error:
        return (
            None,
            {},
            [Problem(path, error.line, error.message, "fix the YAML syntax (indentation, quotes, colons)")],
        )
    if not isinstance(data, dict):
        return (
            None,
            lines,
            [
                Problem(
                    path,
                    1,
                    "the file is not a YAML mapping",
                    f"write 'key: value' pairs as in other {model.__name__} files",
                )
            ],
        )
    try:
        return model.model_validate(data), lines, []
    except ValidationError as error:
        return None, lines, _pydantic_problems(path, lines, error, model)


def load_taxonomy(root: Path) -> tuple[Taxonomy, list[Problem]]:
    """Load every branch, entry and the vocabulary below ``root/taxonomy``.

    Per-file problems (syntax, schema, file/folder naming, duplicate ids) are returned; cross-file
    integrity is checked by `kdatlas.validate.validate_repository`.
    """
    taxonomy = Taxonomy(root=root)
    directory = taxonomy.directory
    problems: list[Problem] = []
    if not directory.is_dir():
        return taxonomy, [
            Problem(
                directory,
                1,
                "there is no taxonomy/ folder",
                "run kdatlas from the repository root or pass its path",
            )
        ]

    vocabulary_path = directory / VOCABULARY_FILE
    if vocabulary_path.is_file():
        taxonomy.vocabulary, _, found = parse_file(vocabulary_path, Vocabulary)
        problems += found
    else:
        problems.append(
            Problem(
                vocabulary_path,
                1,
                "the tag vocabulary is missing",
                "create taxonomy/vocabulary.yaml with a 'tags:' mapping",
            )
        )

    for path in sorted(directory.rglob("*.yaml")):
        relative = path.relative_to(directory)
        if relative.parts[0] == "schema" or path == vocabulary_path:
            continue
        folder = relative.parent.as_posix()
        if path.name == BRANCH_FILE:
            branch, _, found = parse_file(path, Branch)
            problems += found
            if branch is None:
                continue
            if branch.id != folder:
                problems.append(
                    Problem(
                        path,
                        1,
                        f"branch id '{branch.id}' does not match its folder '{folder}'",
                        f"set 'id: {folder}' or move the file",
                    )
                )
                continue
            taxonomy.branches[branch.id] = branch
            taxonomy.files[branch.id] = path
            continue
        entry, lines, found = parse_file(path, Entry)
        problems += found
        if entry is None:
            taxonomy.unparsed.add(path.stem)  # reported once, here; references to it are not errors
            continue
        if entry.id != path.stem:
            problems.append(
                Problem(
                    path,
                    line_of(lines, ("id",)),
                    f"entry id '{entry.id}' does not match the file name '{path.name}'",
                    f"rename the file to '{entry.id}.yaml' or set 'id: {path.stem}'",
                )
            )
            continue
        if entry.branch != folder:
            problems.append(
                Problem(
                    path,
                    line_of(lines, ("branch",)),
                    f"entry says 'branch: {entry.branch}' but lives in '{folder}'",
                    f"set 'branch: {folder}' or move the file to taxonomy/{entry.branch}/",
                )
            )
        if entry.id in taxonomy.entries:
            first = taxonomy.files[entry.id]
            problems.append(
                Problem(
                    path,
                    line_of(lines, ("id",)),
                    f"duplicate id '{entry.id}' (also in {first.relative_to(root)})",
                    "ids are unique: pick another id",
                )
            )
            continue
        taxonomy.entries[entry.id] = entry
        taxonomy.files[entry.id] = path
        taxonomy.lines[entry.id] = lines
    return taxonomy, problems
