"""Safe YAML loading that remembers where every value came from.

Validation messages point at ``file:line``. PyYAML's composed node tree carries positions, so we
compose once (safe loader only), build the Python data from the same nodes, and keep a map from
each value's path (``("equations", 0, "latex")``) to its 1-based line.

Anchors and aliases (``&name`` / ``*name``) have no place in the data and are refused before
anything is composed: nested aliases expand exponentially (a ten-line "billion laughs" document
took minutes and gigabytes), and the check reads the event stream once, in time linear in the text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PathKey = tuple[str | int, ...]


class YamlLoadError(Exception):
    """A file that is not valid YAML; carries the line of the problem."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.message = message


def _record_lines(node: yaml.Node, path: PathKey, lines: dict[PathKey, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[(*path, key)] = key_node.start_mark.line + 1
            _record_lines(value_node, (*path, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*path, index), lines)


def reject_aliases(text: str, path: Path) -> None:
    """Raise `YamlLoadError` at the first anchor or alias of ``text`` (parsing events only).

    Raises:
        YamlLoadError: an anchor or alias, with its line and how to fix it.
        yaml.YAMLError: the text is not valid YAML (the caller reports it with its line).
    """
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            raise YamlLoadError(
                path,
                event.start_mark.line + 1,
                f"YAML {kind} '{event.anchor}' is not allowed in kdatlas data — write the value out "
                "where it is used (anchors and aliases can expand without bound)",
            )


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[PathKey, int]]:
    """Load one YAML document safely and return ``(data, {value path: line})``.

    Raises:
        YamlLoadError: the file is not readable, not valid YAML, or uses anchors/aliases (with the
            offending line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise YamlLoadError(path, 1, f"cannot read the file ({error})") from error
    try:
        reject_aliases(text, path)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlLoadError(path, line, f"invalid YAML: {error.problem or error}") from error
    except yaml.YAMLError as error:
        raise YamlLoadError(path, 1, f"invalid YAML: {error}") from error
    lines: dict[PathKey, int] = {}
    if node is not None:
        _record_lines(node, (), lines)
    return data, lines


def line_of(lines: dict[PathKey, int], path: PathKey) -> int:
    """The line of ``path``, falling back to its nearest recorded ancestor (or line 1)."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get((), 1)
