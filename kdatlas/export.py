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
from kdatlas.bib import Bibliography
from kdatlas.taxonomy import Taxonomy
from kdatlas.validate import Report

EXPORT_FORMAT = 1
JSON_NAME = "kdatlas-taxonomy.json"
YAML_NAME = "kdatlas-taxonomy.yaml"
BIB_NAME = "kd.bib"


def merged_taxonomy(taxonomy: Taxonomy) -> dict[str, Any]:
    """The whole taxonomy as one JSON-serialisable document."""
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
    paths = []
    for name, text in release_files(report.taxonomy, report.bibliography).items():
        paths.append(out_dir / name)
        paths[-1].write_text(text, encoding="utf-8")
    return paths


def release_files(taxonomy: Taxonomy, bibliography: Bibliography) -> dict[str, str]:
    """The release as ``{file name: text}`` (also published on the site by `kdatlas.site`)."""
    document = merged_taxonomy(taxonomy)
    return {
        JSON_NAME: json.dumps(document, indent=2, ensure_ascii=False) + "\n",
        YAML_NAME: yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100),
        BIB_NAME: bibliography.bibtex(sorted(bibliography.entries)),
    }
