"""Export the JSON Schema of the taxonomy files, for editor completion and external tools.

Each YAML file starts with ``# yaml-language-server: $schema=<relative path>`` so editors with the
YAML language server complete and check fields while a contributor types. The files are
generated from `kdatlas.model`; a test keeps them in sync.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from kdatlas.model import Branch, Entry, Vocabulary

SCHEMAS: dict[str, type[BaseModel]] = {
    "entry.schema.json": Entry,
    "branch.schema.json": Branch,
    "vocabulary.schema.json": Vocabulary,
}


def render_schema(model: type[BaseModel]) -> str:
    """The JSON Schema of ``model`` as stable, pretty-printed text."""
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write_schemas(root: Path, check_only: bool = False) -> list[str]:
    """Write (or, with ``check_only``, compare) ``taxonomy/schema/*.json``; returns stale file names."""
    directory = root / "taxonomy" / "schema"
    directory.mkdir(parents=True, exist_ok=True)
    stale = []
    for name, model in SCHEMAS.items():
        path = directory / name
        text = render_schema(model)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
            if not check_only:
                path.write_text(text, encoding="utf-8")
    return stale
