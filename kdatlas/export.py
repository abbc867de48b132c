"""A machine-readable release: the merged taxonomy (JSON and YAML) and the whole bibliography.

``kdatlas export -o DIR`` writes

- ``kdatlas-taxonomy.json`` and ``kdatlas-taxonomy.yaml``: ``{"format", "version", "branches",
  "vocabulary", "entries"}``, every entry as the typed model dumps it, in tree order;
- ``kd.bib``: every BibTeX entry of ``bib/``.

The export refuses to run on a taxonomy with problems: a release is only made from valid data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

import kdatlas
from kdatlas.validate import Report

EXPORT_FORMAT = 1
JSON_NAME = "kdatlas-taxonomy.json"
YAML_NAME = "kdatlas-taxonomy.yaml"
BIB_NAME = "kd.bib"


def merged_taxonomy(report: Report) -> dict[str, Any]:
    """The whole taxonomy as one JSON-serialisable document."""
    taxonomy = report.taxonomy
    return {
        "format": EXPORT_FORMAT,
        "version": kdatlas.__version__,
        "branches": [branch.model_dump(mode="json") for branch in taxonomy.walk()],
        "vocabulary": taxonomy.vocabulary.model_dump(mode="json")["tags"] if taxonomy.vocabulary else {},
        "entries": [entry.model_dump(mode="json") for entry in taxonomy.ordered_entries()],
    }


def write_export(report: Report, out_dir: Path) -> list[Path]:
    """Write the release files into ``out_dir``; returns their paths."""
    if not report.ok:
        raise ValueError(
            f"the taxonomy has {len(report.problems)} problem(s) — run 'kdatlas validate' and fix them first"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    document = merged_taxonomy(report)
    paths = [out_dir / JSON_NAME, out_dir / YAML_NAME, out_dir / BIB_NAME]
    paths[0].write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths[1].write_text(
        yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100), encoding="utf-8"
    )
    paths[2].write_text(report.bibliography.bibtex(sorted(report.bibliography.entries)), encoding="utf-8")
    return paths
