"""The bibliography: ``bib/*.bib`` parsed with bibtexparser 2, checked, and rendered.

bibtexparser 2 is fault tolerant: a malformed block does not raise, it comes back in
``library.failed_blocks``. Here every failed block, every duplicate key (within or across files)
and every entry without title/author/year or without a way to find the paper (DOI, arXiv eprint
or URL) is a `kdatlas.problems.Problem`.

Identifiers are checked too (`identifier_problems`): a reference needs a DOI or an arXiv id, or an
explicit ``noidentifier = {why}`` field for works that have neither (blog posts, repositories).
An arXiv link without ``eprint``, a malformed arXiv id or DOI, and a placeholder left by
``kdatlas new`` are reported.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import bibtexparser
from bibtexparser.model import DuplicateBlockKeyBlock, Entry

from kdatlas.problems import Problem

BIB_DIR = "bib"
REQUIRED_FIELDS = ("title", "author", "year")
LOCATOR_FIELDS = ("doi", "eprint", "url")
NO_IDENTIFIER_FIELD = "noidentifier"
PLACEHOLDER = "FILL IN"
"""Marker that `kdatlas new` puts in every field the contributor must fill; validation rejects it."""
ARXIV_ID = re.compile(r"(\d{4}\.\d{4,5}|[a-z-]+(\.[A-Z]{2})?/\d{7})(v\d+)?")
ARXIV_URL = re.compile(r"arxiv\.org/(abs|pdf)/([^\s/?#]+?)(\.pdf)?/?$")
DOI = re.compile(r"10\.\d{4,9}/\S+")


@dataclass
class Bibliography:
    """All entries of ``bib/*.bib`` by key, with the file and line they came from."""

    entries: dict[str, Entry] = field(default_factory=dict)
    sources: dict[str, tuple[Path, int]] = field(default_factory=dict)

    def field(self, key: str, name: str) -> str:
        """A field's raw value ('' when absent)."""
        found = self.entries[key].fields_dict.get(name)
        return str(found.value).strip() if found is not None else ""

    def bibtex(self, keys: list[str] | None = None) -> str:
        """BibTeX text for ``keys`` (all entries when None), in the order given."""
        chosen = list(self.entries) if keys is None else keys
        return "\n\n".join(self.entries[key].raw.strip() for key in chosen) + "\n"

    def text(self, key: str) -> str:
        """A formatted reference: 'Authors (year). Title. Venue. doi/arXiv/url'."""
        authors = format_authors(self.field(key, "author"))
        title = strip_braces(self.field(key, "title"))
        venue = strip_braces(
            self.field(key, "journal") or self.field(key, "booktitle") or self.field(key, "howpublished")
        )
        parts = [f"{authors} ({self.field(key, 'year')}). {title}."]
        if venue:
            parts.append(f"{venue}.")
        if self.field(key, "doi"):
            parts.append(f"doi:{self.field(key, 'doi')}")
        if self.field(key, "eprint"):
            parts.append(f"arXiv:{self.field(key, 'eprint')}")
        if not self.field(key, "doi") and not self.field(key, "eprint") and self.field(key, "url"):
            parts.append(self.field(key, "url"))
        return " ".join(parts)

    def link(self, key: str) -> str | None:
        """Best link to the paper: DOI, then arXiv, then the url field."""
        if self.field(key, "doi"):
            return f"https://doi.org/{self.field(key, 'doi')}"
        if self.field(key, "eprint"):
            return f"https://arxiv.org/abs/{self.field(key, 'eprint')}"
        return self.field(key, "url") or None


def strip_braces(text: str) -> str:
    """Remove BibTeX case-protection braces and collapse whitespace."""
    return re.sub(r"\s+", " ", text.replace("{", "").replace("}", "")).strip()


def format_authors(author_field: str, limit: int = 8) -> str:
    """'Hinton, Geoffrey and Dean, Jeff' → 'Hinton, G., & Dean, J.' (``et al.`` past ``limit``)."""
    names = [strip_braces(name) for name in re.split(r"\s+and\s+", author_field.strip()) if name.strip()]
    short = []
    for name in names:
        if "," in name:
            last, first = (part.strip() for part in name.split(",", 1))
        else:
            pieces = name.split()
            last, first = pieces[-1], " ".join(pieces[:-1])
        initials = " ".join(f"{piece[0]}." for piece in re.split(r"[\s-]+", first) if piece)
        short.append(f"{last}, {initials}".strip().rstrip(","))
    if len(short) > limit:
        return ", ".join(short[:limit]) + ", et al."
    if len(short) > 1:
        return ", ".join(short[:-1]) + ", & " + short[-1]
    return short[0] if short else "Anonymous"


def load_bibliography(root: Path) -> tuple[Bibliography, list[Problem]]:
    """Parse every ``bib/*.bib`` under ``root``; returns the entries and every problem found."""
    bibliography = Bibliography()
    problems: list[Problem] = []
    files = sorted((root / BIB_DIR).glob("*.bib"))
    if not files:
        return bibliography, [
            Problem(root / BIB_DIR, 1, "no .bib files found", "add BibTeX files under bib/")
        ]
    for path in files:
        # bibtexparser logs each failed block itself; we report them as problems instead.
        logger = logging.getLogger("bibtexparser")
        previous, logger.disabled = logger.disabled, True
        try:
            library = bibtexparser.parse_string(path.read_text(encoding="utf-8"))
        finally:
            logger.disabled = previous
        for block in library.failed_blocks:
            line = block.start_line + 1
            if isinstance(block, DuplicateBlockKeyBlock):
                problems.append(
                    Problem(
                        path,
                        line,
                        f"duplicate BibTeX key '{block.key}'",
                        "keys are unique: rename or delete one of them",
                    )
                )
            else:
                problems.append(
                    Problem(
                        path,
                        line,
                        f"BibTeX block does not parse ({block.error or 'syntax error'})",
                        "check braces, commas and the '@type{key,' header",
                    )
                )
        for entry in library.entries:
            line = entry.start_line + 1
            if entry.key in bibliography.entries:
                first, first_line = bibliography.sources[entry.key]
                problems.append(
                    Problem(
                        path,
                        line,
                        f"duplicate BibTeX key '{entry.key}' (also {first.name}:{first_line})",
                        "keys are unique across bib/: keep one",
                    )
                )
                continue
            missing = [
                name for name in REQUIRED_FIELDS if not str(entry.fields_dict.get(name, _EMPTY).value).strip()
            ]
            if missing:
                problems.append(
                    Problem(
                        path,
                        line,
                        f"entry '{entry.key}' has no {', '.join(missing)}",
                        "add the missing fields from the paper's real metadata",
                    )
                )
            if not any(str(entry.fields_dict.get(name, _EMPTY).value).strip() for name in LOCATOR_FIELDS):
                problems.append(
                    Problem(
                        path,
                        line,
                        f"entry '{entry.key}' has no doi, eprint or url",
                        "add the DOI, or the arXiv id as 'eprint' with archivePrefix = {arXiv}, or a url",
                    )
                )
            problems += [Problem(path, line, message, fix) for message, fix in identifier_problems(entry)]
            year = str(entry.fields_dict.get("year", _EMPTY).value).strip()
            if year and not re.fullmatch(r"\d{4}", year):
                problems.append(
                    Problem(path, line, f"entry '{entry.key}' has year '{year}'", "use a four-digit year")
                )
            bibliography.entries[entry.key] = entry
            bibliography.sources[entry.key] = (path, line)
    return bibliography, problems


def _field(entry: Entry, name: str) -> str:
    return str(entry.fields_dict.get(name, _EMPTY).value).strip()


def identifier_problems(entry: Entry) -> list[tuple[str, str]]:
    """What is wrong with an entry's persistent identifiers, as ``(problem, fix)`` pairs."""
    found: list[tuple[str, str]] = []
    key = entry.key
    placeholders = sorted(name for name, item in entry.fields_dict.items() if PLACEHOLDER in str(item.value))
    if placeholders:
        found.append(
            (
                f"entry '{key}' still has placeholders in: {', '.join(placeholders)}",
                "replace every 'FILL IN' with the paper's real metadata (arXiv abstract page or publisher)",
            )
        )
    eprint, doi, url = _field(entry, "eprint"), _field(entry, "doi"), _field(entry, "url")
    if eprint and not ARXIV_ID.fullmatch(eprint):
        found.append(
            (
                f"entry '{key}' has eprint '{eprint}', which is not an arXiv id",
                "use the bare id, e.g. 2306.08543",
            )
        )
    if doi and not DOI.fullmatch(doi):
        found.append(
            (
                f"entry '{key}' has doi '{doi}', which is not a DOI",
                "use the bare DOI starting with '10.', without https://doi.org/",
            )
        )
    arxiv_link = ARXIV_URL.search(url)
    if arxiv_link and not eprint:
        found.append(
            (
                f"entry '{key}' links to arXiv but has no eprint",
                f"add eprint = {{{arxiv_link.group(2)}}} and archivePrefix = {{arXiv}}",
            )
        )
    if not eprint and not doi and not _field(entry, NO_IDENTIFIER_FIELD):
        found.append(
            (
                f"entry '{key}' has neither an arXiv id nor a DOI",
                "add eprint = {<arXiv id>} (with archivePrefix = {arXiv}) and/or doi = {10....}; if the "
                f"work has neither (blog post, repository), say so in {NO_IDENTIFIER_FIELD} = {{why}}",
            )
        )
    return found


class _Empty:
    value = ""


_EMPTY = _Empty()
