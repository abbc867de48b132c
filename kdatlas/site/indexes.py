"""The pages that list entries: branch overviews, the whole taxonomy, the bibliography, the tags,
the coverage table and the home page. Each builds rows here and lays them out in a template."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from kdatlas.citation import citation_bibtex, citation_text
from kdatlas.model import Branch, Entry, Status
from kdatlas.site.entry import STATUS_LABEL, TEACHER_ACCESS_LABEL, short_citation
from kdatlas.site.links import (
    BIBLIOGRAPHY_PAGE,
    TAGS_PAGE,
    TAXONOMY_PAGE,
    Site,
    branch_page,
    entry_page,
    one_line,
    page_url,
    relative_link,
)
from kdatlas.site.mindmap import render_mindmap
from kdatlas.site.render import environment, render

SURVEY_KEY = "yang2024kdsurvey"
HOME_TEMPLATE = "home.md.j2"


@dataclass(frozen=True)
class EntryRow:
    """One row of an entry table (``branch`` only where the table has that column)."""

    link: str
    branch: str
    year: str
    venue: str
    access: str
    status: str


@dataclass(frozen=True)
class CoverageRow:
    """Entries, implemented and planned below one top-level branch (``link`` may be bold text)."""

    link: str
    entries: int
    implemented: int
    planned: int


def render_entry_table(entries: list[Entry], from_page: str, site: Site, show_branch: bool = False) -> str:
    """Entries as a table: name (linked), year, venue, teacher access, status."""
    rows = []
    for entry in entries:
        branch = site.taxonomy.branches.get(entry.branch)
        rows.append(
            EntryRow(
                link=f"[{entry.name}]({relative_link(from_page, entry_page(entry.id))})",
                branch=branch.name if branch else entry.branch,
                year=str(entry.year),
                venue=entry.venue,
                access=TEACHER_ACCESS_LABEL[entry.teacher_access],
                status=STATUS_LABEL[entry.status],
            )
        )
    return render("partials/entry_table.md.j2", rows=rows, show_branch=show_branch).strip()


def render_stats(site: Site, from_page: str) -> str:
    """Counts per top-level branch and status, with the totals."""
    rows = []
    for branch in site.taxonomy.children(None):
        entries = site.taxonomy.entries_in(branch.id, recursive=True)
        rows.append(
            CoverageRow(
                link=f"[{branch.name}]({relative_link(from_page, branch_page(branch.id))})",
                entries=len(entries),
                implemented=sum(e.status is Status.implemented for e in entries),
                planned=sum(e.status is Status.planned for e in entries),
            )
        )
    total = CoverageRow(
        link="All",
        entries=sum(r.entries for r in rows),
        implemented=sum(r.implemented for r in rows),
        planned=sum(r.planned for r in rows),
    )
    return render("partials/coverage.md.j2", rows=rows, total=total).strip()


def render_branch(branch: Branch, site: Site) -> str:
    """A branch overview: description, survey section, sub-branches and the entries below it."""
    page = branch_page(branch.id)
    taxonomy = site.taxonomy
    children = [
        (
            child,
            len(taxonomy.entries_in(child.id, recursive=True)),
            relative_link(page, branch_page(child.id)),
        )
        for child in taxonomy.children(branch.id)
    ]
    entries = taxonomy.entries_in(branch.id, recursive=True)
    source = site.source_path(branch.id)
    # The code folders mirror the taxonomy: link this branch's package and tests once they exist.
    package = "/".join(["reference_impls", *(part.replace("-", "_") for part in branch.id.split("/"))])
    folders = [
        (label, folder, site.blob_url(folder).replace("/blob/", "/tree/", 1))
        for label, folder in (("Code", package), ("Tests", "tests" + package.removeprefix("reference_impls")))
        if (site.root / folder).is_dir()
    ]
    return render(
        "branch.md.j2",
        folders=folders,
        branch=branch,
        parents=[(b, relative_link(page, branch_page(b.id))) for b in site.branch_trail(branch.id)[:-1]],
        source=source,
        edit_url=site.edit_url(source),
        children=children,
        table=render_entry_table(entries, page, site, show_branch=bool(children)) if entries else "",
    )


def render_taxonomy_index(site: Site) -> str:
    """The overview of the whole tree: counts, then every entry by branch."""
    page = TAXONOMY_PAGE
    groups = []
    for branch in site.taxonomy.walk():
        entries = site.taxonomy.entries_in(branch.id)
        if entries:
            title = " / ".join(b.name for b in site.branch_trail(branch.id))
            link = relative_link(page, branch_page(branch.id))
            groups.append((title, link, render_entry_table(entries, page, site)))
    return render(
        "taxonomy.md.j2", coverage=render_stats(site, page), groups=groups, link=partial(relative_link, page)
    )


def render_bibliography(site: Site) -> str:
    """Every reference, with an anchor per key and the entries that cite it."""
    page = BIBLIOGRAPHY_PAGE
    citing: dict[str, list[Entry]] = {}
    for entry in site.taxonomy.ordered_entries():
        for key in entry.papers:
            citing.setdefault(key, []).append(entry)
    bib = site.bibliography
    keys = sorted(bib.entries, key=lambda k: (short_citation(bib, k).lower(), k))
    references = [
        {
            "key": key,
            "short": short_citation(bib, key),
            "text": bib.text(key),
            "link": bib.link(key),
            "cited_by": ", ".join(
                f"[{e.name}]({relative_link(page, entry_page(e.id))})" for e in citing.get(key, [])
            ),
        }
        for key in keys
    ]
    return render("bibliography.md.j2", references=references, link=partial(relative_link, page))


def render_tags_page(site: Site) -> str:
    """The tag index (Material fills in its marker) with the vocabulary's meanings."""
    vocabulary = site.taxonomy.vocabulary.tags if site.taxonomy.vocabulary else {}
    used = {tag for e in site.taxonomy.entries.values() for tag in e.tags}
    tags = [(tag, meaning) for tag, meaning in sorted(vocabulary.items()) if tag in used]
    return render("tags.md.j2", tags=tags, link=partial(relative_link, TAGS_PAGE))


def render_kb_citation(citation: dict[str, object]) -> str:
    """'Cite this knowledge base' from CITATION.cff: the message, a text reference and BibTeX."""
    return render(
        "partials/cite_kb.md.j2",
        message=one_line(citation["message"]),
        text=citation_text(citation),
        bibtex=citation_bibtex(citation).strip(),
    ).strip()


def render_home(site: Site, citation: dict[str, object], source: str | None = None) -> str:
    """The home page: ``home.md.j2`` (or the template text ``source``) with the generated parts."""
    mindmap = render_mindmap(
        site.taxonomy,
        entry_href=lambda entry_id: page_url(entry_page(entry_id)),
        branch_href=lambda branch_id: page_url(branch_page(branch_id)),
    )
    survey = site.bibliography.bibtex([SURVEY_KEY]).strip() if SURVEY_KEY in site.bibliography.entries else ""
    env = environment()
    template = env.get_template(HOME_TEMPLATE) if source is None else env.from_string(source)
    return template.render(
        mindmap=mindmap,
        coverage=render_stats(site, "index.md"),
        cite_kb=render_kb_citation(citation),
        survey_bibtex=survey,
    )
