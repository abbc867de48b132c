"""'Cite this knowledge base': read ``CITATION.cff`` and render it as BibTeX and as text.

``CITATION.cff`` is the one place the project's own citation lives (GitHub and Zenodo read it
too). The tests validate it against the official CFF 1.2.0 JSON Schema; here we only read the
fields the site shows and fail clearly when one is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdatlas.yamlio import YamlLoadError, reject_aliases

CITATION_FILE = "CITATION.cff"
REQUIRED = ("cff-version", "message", "title", "authors", "version")


class CitationError(ValueError):
    """CITATION.cff is missing, does not parse, or lacks a field the site needs."""


def load_citation(root: Path) -> dict[str, Any]:
    """The parsed ``CITATION.cff`` of the repository at ``root``."""
    path = root / CITATION_FILE
    try:
        text = path.read_text(encoding="utf-8")
        reject_aliases(text, path)
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise CitationError(f"{path}: not found — restore CITATION.cff at the repository root") from None
    except YamlLoadError as error:
        raise CitationError(f"{path}:{error.line}: {error.message}") from None
    except yaml.YAMLError as error:
        raise CitationError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise CitationError(f"{path}: expected a mapping of CFF fields")
    missing = [name for name in REQUIRED if not data.get(name)]
    if missing:
        raise CitationError(
            f"{path}: missing {', '.join(missing)} — see https://citation-file-format.github.io/"
        )
    return data


def _person(author: dict[str, Any]) -> str:
    if "name" in author:
        return "{" + str(author["name"]) + "}"  # an entity: braces keep BibTeX from splitting it
    return f"{author.get('family-names', '')}, {author.get('given-names', '')}".strip(", ")


def _year(citation: dict[str, Any]) -> str:
    return str(citation.get("date-released", ""))[:4]


def citation_key(citation: dict[str, Any]) -> str:
    """BibTeX key: the first word of the title, lower case, plus the version ('kdatlas_0_1_0')."""
    word = str(citation["title"]).split(":")[0].split()[0].lower()
    return f"{word}_{str(citation['version']).replace('.', '_')}"


def citation_bibtex(citation: dict[str, Any]) -> str:
    """The knowledge base as a BibTeX ``@software`` entry (biblatex; BibTeX treats it as @misc)."""
    fields = [
        ("title", "{" + str(citation["title"]) + "}"),
        ("author", " and ".join(_person(a) for a in citation["authors"])),
        ("version", str(citation["version"])),
        ("year", _year(citation)),
        ("url", str(citation.get("url") or citation.get("repository-code") or "")),
        ("doi", str(citation.get("doi", ""))),
    ]
    body = ",\n".join(f"  {name:<8} = {{{value}}}" for name, value in fields if value)
    return f"@software{{{citation_key(citation)},\n{body}\n}}\n"


def citation_text(citation: dict[str, Any]) -> str:
    """A one-line reference: 'The kdatlas contributors (2026). kdatlas: … (version 0.1.0). URL'."""
    names = ", ".join(_person(a).strip("{}") for a in citation["authors"])
    url = citation.get("url") or citation.get("repository-code") or ""
    return (
        f"{names} ({_year(citation)}). *{citation['title']}* (version {citation['version']}). {url}".strip()
    )
