"""The entry page's view model: the metadata card, relations, references and code; laid out by
``templates/entry.md.j2``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

from kdatlas.bib import Bibliography, strip_braces
from kdatlas.model import Entry, Placement, RelationType, Status, TeacherAccess
from kdatlas.site.frameworks import parity_text
from kdatlas.site.leaderboard import Standing, standing
from kdatlas.site.links import (
    BIBLIOGRAPHY_PAGE,
    Site,
    branch_page,
    entry_page,
    mirror_test_path,
    relative_link,
)
from kdatlas.site.render import render
from kdatlas.site.snippets import Snippet, is_text_pipeline, page_snippets

TEACHER_ACCESS_LABEL = {
    TeacherAccess.logits: "logits (white-box)",
    TeacherAccess.hidden_states: "hidden states (white-box)",
    TeacherAccess.text: "generated text only (black-box)",
    TeacherAccess.not_applicable: "not applicable",
}
STATUS_LABEL = {
    Status.implemented: ":material-check-circle:&nbsp;implemented",
    Status.planned: ":material-progress-clock:&nbsp;planned",
    Status.not_applicable: "nothing to run",
}
PLACEMENT_LABEL = {
    Placement.in_survey: "in the survey",
    Placement.beyond_survey: "beyond the survey",
    Placement.survey_itself: "the survey itself",
}
OUTGOING_LABEL = {
    RelationType.extends: "extends",
    RelationType.uses: "uses",
    RelationType.compared_with: "compared with",
    RelationType.applied_in: "applied in",
    RelationType.variant_of: "variant of",
}
# How a relation reads from its target's side ("A extends B" → on B's page: "extended by A").
INCOMING_LABEL = {
    RelationType.extends: "extended by",
    RelationType.uses: "used by",
    RelationType.compared_with: "compared with",
    RelationType.applied_in: "applies",
    RelationType.variant_of: "has variant",
}


def _last_name(author: str) -> str:
    name = strip_braces(author)
    return name.split(",")[0].strip() if "," in name else name.split()[-1]


def short_citation(bibliography: Bibliography, key: str) -> str:
    """'Hinton et al. 2015' for a BibTeX key (the key itself when it is unknown)."""
    if key not in bibliography.entries:
        return key
    authors = [a for a in re.split(r"\s+and\s+", bibliography.field(key, "author")) if a.strip()]
    last = _last_name(authors[0]) if authors else "Anonymous"
    suffix = "" if len(authors) == 1 else (f" & {_last_name(authors[1])}" if len(authors) == 2 else " et al.")
    return f"{last}{suffix} {bibliography.field(key, 'year')}".strip()


@dataclass(frozen=True)
class Relation:
    """One row of the related-entries table (``entry`` is a Markdown link or a code span)."""

    label: str
    entry: str
    note: str


@dataclass(frozen=True)
class Reference:
    """A cited paper: its formatted text and link, or only its key when ``bib/`` lacks it."""

    key: str
    text: str | None
    link: str | None


@dataclass(frozen=True)
class EntryView:
    """What ``entry.md.j2`` shows for one entry."""

    entry: Entry
    page: str
    card: list[tuple[str, str]]
    black_box: bool
    recipe: Snippet | None
    pipeline: Snippet | None
    snippets: list[Snippet]
    relations: list[Relation]
    references: list[Reference]
    bibtex: str
    yaml_path: str
    edit_url: str
    standing: list[Standing]


def metadata_card(entry: Entry, site: Site) -> list[tuple[str, str]]:
    """The card's rows: id, kind, branch, year, venue, teacher access, status, survey, papers, code."""
    page = entry_page(entry.id)
    trail = site.branch_trail(entry.branch)
    branch = " / ".join(f"[{b.name}]({relative_link(page, branch_page(b.id))})" for b in trail)
    status = STATUS_LABEL[entry.status]
    if entry.status is Status.planned and entry.status_reason:
        status += f" — {entry.status_reason}"
    survey = PLACEMENT_LABEL[entry.survey.placement]
    if entry.survey.section:
        survey += f", {entry.survey.section}"
    papers = []
    for key in entry.papers:
        label = short_citation(site.bibliography, key)
        link = site.bibliography.link(key) if key in site.bibliography.entries else None
        shown = f"[{label}]({link})" if link else label
        papers.append(f"{shown} ([ref]({relative_link(page, BIBLIOGRAPHY_PAGE)}#{key}))")
    rows = [
        ("Id", f"`{entry.id}`"),
        ("Kind", entry.kind.value),
        ("Branch", branch or f"`{entry.branch}`"),
        ("Year", str(entry.year)),
        ("Venue", entry.venue),
        ("Teacher access", TEACHER_ACCESS_LABEL[entry.teacher_access]),
        ("Status", status),
        ("Survey", survey),
        ("Papers", "; ".join(papers)),
    ]
    if entry.implementation is not None:
        code = site.code_file(entry.implementation.module)
        rows.append(("Code", f"[`{code}`]({site.blob_url(code)})"))
        tests = mirror_test_path(entry.implementation.module)
        if site.has_file(tests):  # shown once the tests mirror the source tree
            rows.append(("Tests", f"[`{tests}`]({site.blob_url(tests)})"))
    return rows


def relations(entry: Entry, site: Site) -> list[Relation]:
    """Related entries, both the entry's own relations and those pointing at it."""
    page = entry_page(entry.id)

    def name_of(target: str) -> str:
        other = site.taxonomy.entries.get(target)
        if other is None:
            return f"`{target}` (not in the knowledge base yet)"
        return f"[{other.name}]({relative_link(page, entry_page(other.id))})"

    candidates = [(OUTGOING_LABEL[r.type], r.target, r.note or "") for r in entry.relations]
    candidates += [
        (INCOMING_LABEL[kind], other.id, note or "") for kind, other, note in site.incoming(entry.id)
    ]
    rows: list[Relation] = []
    seen: set[tuple[str, str]] = set()
    for label, target, note in candidates:  # "compared with" is symmetric: list each pair once
        if (label, target) not in seen:
            seen.add((label, target))
            rows.append(Relation(label, name_of(target), note))
    return rows


def references(entry: Entry, site: Site) -> list[Reference]:
    """The entry's papers, formatted (a key missing from ``bib/`` keeps only the key)."""
    bib = site.bibliography
    return [
        Reference(key, bib.text(key), bib.link(key)) if key in bib.entries else Reference(key, None, None)
        for key in entry.papers
    ]


def entry_view(entry: Entry, site: Site) -> EntryView:
    """Everything the entry page shows, computed once."""
    known = [k for k in entry.papers if k in site.bibliography.entries]
    yaml_path = site.source_path(entry.id)
    snippets = page_snippets(entry, site)

    def first(kind: str) -> Snippet | None:
        return next((s for s in snippets if s.kind == kind), None)

    return EntryView(
        entry=entry,
        page=entry_page(entry.id),
        card=metadata_card(entry, site),
        black_box=is_text_pipeline(entry),
        recipe=first("recipe"),
        pipeline=first("pipeline"),
        snippets=[s for s in snippets if s.kind in ("loss", "call")],
        relations=relations(entry, site),
        references=references(entry, site),
        bibtex=site.bibliography.bibtex(known).strip() if known else "",
        yaml_path=yaml_path,
        edit_url=site.edit_url(yaml_path),
        standing=standing(site.board, entry.id),
    )


def render_relations(entry: Entry, site: Site) -> str:
    """The related-entries table alone (empty when there are none)."""
    return render("partials/relations.md.j2", relations=relations(entry, site)).strip()


def render_entry(entry: Entry, site: Site) -> str:
    """The whole page of one entry."""
    view = entry_view(entry, site)
    return render(
        "entry.md.j2", view=view, entry=entry, link=partial(relative_link, view.page),
        parity=partial(parity_text, site.parity),
    )  # fmt: skip


def render_redirect(old_id: str, entry: Entry) -> str:
    """A stub page at a former id that sends the reader to the renamed entry."""
    page = entry_page(old_id)
    return render(
        "redirect.md.j2", old_id=old_id, entry=entry, target=relative_link(page, entry_page(entry.id))
    )
