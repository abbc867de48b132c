"""CITATION.cff: valid against the official CFF 1.2.0 schema, consistent with the project, on the site."""

from __future__ import annotations

import json
import re
from pathlib import Path

import bibtexparser
import jsonschema
import pytest
import yaml

import kdatlas
from kdatlas.citation import CitationError, citation_bibtex, citation_text, load_citation
from kdatlas.site.indexes import render_kb_citation

REPO = Path(__file__).resolve().parents[2]
# The schema file of the Citation File Format 1.2.0 (CC-BY-4.0), as shipped by cffconvert.
SCHEMA = Path(__file__).resolve().parents[1] / "data" / "citation-file-format-1.2.0.schema.json"


def test_citation_file_is_valid_cff() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    data = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    # CFF dates are strings in YAML; the schema validates the ISO date format itself.
    jsonschema.validate(data, schema, format_checker=jsonschema.FormatChecker())


def test_citation_matches_the_project() -> None:
    citation = load_citation(REPO)
    assert str(citation["version"]) == kdatlas.__version__
    mkdocs = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    assert f"repo_url: {citation['repository-code']}" in mkdocs
    assert f"site_url: {citation['url']}" in mkdocs
    survey = citation["references"][0]
    bib = bibtexparser.parse_string((REPO / "bib" / "kd.bib").read_text(encoding="utf-8"))
    entry = next(e for e in bib.entries if e.key == "yang2024kdsurvey")
    assert survey["doi"] == entry.fields_dict["doi"].value
    assert survey["title"] == entry.fields_dict["title"].value
    assert [a["family-names"] for a in survey["authors"]] == [
        name.split(",")[0].strip() for name in entry.fields_dict["author"].value.split(" and ")
    ]


def test_rendered_bibtex_parses_and_the_home_page_shows_it() -> None:
    citation = load_citation(REPO)
    parsed = bibtexparser.parse_string(citation_bibtex(citation))
    assert not parsed.failed_blocks and len(parsed.entries) == 1
    fields = parsed.entries[0].fields_dict
    assert fields["version"].value == str(citation["version"])
    assert "{The kdatlas contributors}" in fields["author"].value
    block = render_kb_citation(citation)
    assert citation_text(citation) in block and "```bibtex" in block


def test_broken_citation_file_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CitationError, match="not found"):
        load_citation(tmp_path)
    (tmp_path / "CITATION.cff").write_text("cff-version: 1.2.0\ntitle: x\n", encoding="utf-8")
    with pytest.raises(CitationError, match=re.escape("missing message, authors, version")):
        load_citation(tmp_path)
