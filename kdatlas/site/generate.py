"""The generation step: load and check the data, render every page, hand each to a writer.

A plain Python step, as DESIGN asks: ``docs/gen_pages.py`` runs it inside mkdocs-gen-files
(virtual files) and `write_pages` runs it standalone (real files).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdatlas.citation import CITATION_FILE, CitationError, load_citation
from kdatlas.claims import ClaimsError, load_claims
from kdatlas.export import release_files
from kdatlas.model import Branch
from kdatlas.problems import Problem
from kdatlas.site.catalogue import render_catalogue_page, render_statistics_page
from kdatlas.site.claims import CLAIMS_PAGE, CLAIMS_RESULTS, load_claim_results, render_claims_page
from kdatlas.site.conventions import CONVENTIONS_PAGE, load_conventions, render_conventions_page
from kdatlas.site.entry import render_entry, render_redirect
from kdatlas.site.frameworks import FRAMEWORKS_PAGE, PARITY_FILE, load_parity, render_frameworks_page
from kdatlas.site.indexes import (
    HOME_TEMPLATE,
    render_bibliography,
    render_branch,
    render_home,
    render_tags_page,
    render_taxonomy_index,
)
from kdatlas.site.leaderboard import (
    BOARD_FILE,
    FAMILY_BOARD_FILE,
    HEADLINE_BOARD_FILE,
    HEADLINE_COMMAND,
    LEADERBOARD_PAGE,
    load_board,
    render_leaderboard_page,
)
from kdatlas.site.links import (
    BIB_DOWNLOAD,
    BIBLIOGRAPHY_PAGE,
    CATALOGUE_PAGE,
    REPO_BRANCH,
    REPO_URL,
    STATISTICS_PAGE,
    TAGS_PAGE,
    TAXONOMY_PAGE,
    Site,
    branch_page,
    entry_page,
    page_url,
    relative_link,
)
from kdatlas.site.llms import LLMS_FILE, render_llms_txt
from kdatlas.site.mdmath import MathError, latex_to_mathml
from kdatlas.site.render import TEMPLATE_FOLDER
from kdatlas.site.stats import compute_stats
from kdatlas.taxonomy import Taxonomy
from kdatlas.validate import validate_repository

Writer = Callable[[str, str], None]
EditPathSetter = Callable[[str, str], None]
# Edit links are relative to docs/ (MkDocs' edit_uri); the home page's source is its template.
HOME_EDIT_PATH = f"../kdatlas/site/{TEMPLATE_FOLDER}/{HOME_TEMPLATE}"
MISSING_CITATION: dict[str, object] = {
    "message": "CITATION.cff is missing or invalid.",
    "title": "kdatlas",
    "authors": [],
    "version": "?",
}


def build_nav(taxonomy: Taxonomy) -> list[object]:
    """The 'Taxonomy' nav subtree (MkDocs ``nav`` syntax): sections per branch with index pages."""

    def section(branch: Branch) -> dict[str, list[object]]:
        items: list[object] = [branch_page(branch.id)]
        items += [section(child) for child in taxonomy.children(branch.id)]
        items += [{entry.name: entry_page(entry.id)} for entry in taxonomy.entries_in(branch.id)]
        return {branch.name: items}

    return [TAXONOMY_PAGE, *[section(branch) for branch in taxonomy.children(None)]]


def math_problems(taxonomy: Taxonomy) -> list[Problem]:
    """Every equation that latex2mathml cannot render, at its YAML line (earlier than the build error)."""
    problems = []
    for entry in taxonomy.entries.values():
        for index, equation in enumerate(entry.equations):
            try:
                latex_to_mathml(equation.latex, display=True)
            except MathError as error:
                problems.append(
                    Problem(
                        taxonomy.files[entry.id],
                        taxonomy.line(entry.id, "equations", index, "latex"),
                        f"equation '{equation.label}' does not render: {error.reason}",
                        "fix the LaTeX (latex2mathml supports standard math-mode commands)",
                    )
                )
    return problems


def api_problems(site: Site) -> list[Problem]:
    """Every ``implementation.api`` path that did not import while the snippets were rendered."""
    taxonomy = site.taxonomy
    problems = []
    for entry in taxonomy.ordered_entries():
        for index, dotted in enumerate(entry.implementation.api if entry.implementation else []):
            if dotted in site.api_errors:
                problems.append(
                    Problem(
                        taxonomy.files[entry.id],
                        taxonomy.line(entry.id, "implementation", "api", index),
                        f"implementation.api '{dotted}' does not import ({site.api_errors[dotted]})",
                        "fix the dotted path; `kdatlas validate` checks every implementation",
                    )
                )
    return problems


CLAIMS_DEFINITIONS = Path("benchmarks") / "claims.yaml"


@dataclass
class Generated:
    """What `generate_pages` wrote and what it found wrong."""

    pages: list[str]
    problems: list[Problem]


def load_site(
    root: Path, repo_url: str = REPO_URL, repo_branch: str = REPO_BRANCH
) -> tuple[Site, list[Problem]]:
    """Load and cross-check the data (implementations are imported later, one API object at a time)."""
    report = validate_repository(root, check_implementations=False)
    problems = list(report.problems) + math_problems(report.taxonomy)
    board, board_problem = load_board(root)
    if board_problem:
        problems.append(Problem(root / BOARD_FILE, 1, board_problem, "run `kdatlas bench` again"))
    family_board, family_problem = load_board(root, FAMILY_BOARD_FILE)
    if family_problem:
        problems.append(Problem(root / FAMILY_BOARD_FILE, 1, family_problem, "run `kdatlas bench --student-family gpt2` again"))
    headline_board, headline_problem = load_board(root, HEADLINE_BOARD_FILE)
    if headline_problem:
        problems.append(Problem(root / HEADLINE_BOARD_FILE, 1, headline_problem, f"run `{HEADLINE_COMMAND}` again"))
    claim_results, claims_problem = load_claim_results(root)
    if claims_problem:
        problems.append(Problem(root / CLAIMS_RESULTS, 1, claims_problem, "run `kdatlas claims --run` again"))
    claims: list = []
    if (root / CLAIMS_DEFINITIONS).exists():
        try:
            claims = load_claims(root / CLAIMS_DEFINITIONS)[1]
        except ClaimsError as error:
            problems.append(Problem(root / CLAIMS_DEFINITIONS, 1, str(error), "fix the claims file"))
    site = Site(report.taxonomy, report.bibliography, repo_url, repo_branch, board=board)
    site.claims, site.claim_results, site.family_board = claims, claim_results, family_board
    site.headline_board = headline_board
    site.conventions, site.guards, convention_problems = load_conventions(root)
    site.parity, parity_problem = load_parity(root)
    if parity_problem:
        problems.append(Problem(root / PARITY_FILE, 1, parity_problem, "rerun benchmarks/peer_parity.py"))
    return site, problems + convention_problems


def generate_pages(
    root: Path,
    write: Writer,
    set_edit_path: EditPathSetter | None = None,
    repo_url: str = REPO_URL,
    repo_branch: str = REPO_BRANCH,
) -> Generated:
    """Render every generated page and call ``write(docs_path, text)`` for each.

    Args:
        root: Repository root (holds ``taxonomy/``, ``bib/`` and ``docs/``).
        write: Receives each docs-relative path and its content (Markdown, or BibTeX for ``kd.bib``).
        set_edit_path: Optional ``(docs_path, edit_path)`` callback; edit paths are relative to
            ``docs/`` (``../taxonomy/...yaml``), as MkDocs' ``edit_uri`` expects.
        repo_url: Repository URL used for in-page edit and source links.
        repo_branch: Branch used in those links.

    Returns:
        The written paths, and every data problem found (the caller decides how loud to be).
    """
    site, problems = load_site(root, repo_url, repo_branch)
    taxonomy = site.taxonomy
    written: list[str] = []

    def emit(path: str, text: str, edit: str | None = None) -> None:
        write(path, text)
        written.append(path)
        if set_edit_path is not None and edit is not None:
            set_edit_path(path, edit)

    try:
        citation = load_citation(root)
    except CitationError as error:
        problems.append(Problem(root / CITATION_FILE, 1, str(error).split(": ", 1)[-1], "fix CITATION.cff"))
        citation = MISSING_CITATION
    emit("index.md", render_home(site, citation), HOME_EDIT_PATH)
    for entry in taxonomy.ordered_entries():
        emit(entry_page(entry.id), render_entry(entry, site), "../" + site.source_path(entry.id))
        for old_id in entry.former_ids:
            emit(entry_page(old_id), render_redirect(old_id, entry))
    for branch in taxonomy.walk():
        emit(branch_page(branch.id), render_branch(branch, site), "../" + site.source_path(branch.id))
    emit(TAXONOMY_PAGE, render_taxonomy_index(site))
    emit(BIBLIOGRAPHY_PAGE, render_bibliography(site), "../bib/kd.bib")
    emit(TAGS_PAGE, render_tags_page(site), "../taxonomy/vocabulary.yaml")
    emit(
        STATISTICS_PAGE,
        render_statistics_page(
            compute_stats(taxonomy),
            branch_href=lambda branch_id: relative_link(STATISTICS_PAGE, branch_page(branch_id)),
            catalogue_link=relative_link(STATISTICS_PAGE, CATALOGUE_PAGE),
        ),
    )
    emit(
        CATALOGUE_PAGE,
        render_catalogue_page(
            taxonomy,
            # raw HTML links are not rewritten by MkDocs: give the final directory-style URL
            entry_href=lambda entry_id: "../" + page_url(entry_page(entry_id)),
            branch_name=lambda branch_id: " / ".join(b.name for b in site.branch_trail(branch_id)),
        ),
    )
    emit(
        LEADERBOARD_PAGE,
        render_leaderboard_page(
            site.board,
            entry_href=lambda entry_id: relative_link(LEADERBOARD_PAGE, entry_page(entry_id)),
            family_board=site.family_board,
            headline_board=site.headline_board,
        ),
    )
    emit(CLAIMS_PAGE, render_claims_page(site.claim_results, site.claims, cite=site.short_citation))
    emit(CONVENTIONS_PAGE, render_conventions_page(site.conventions, site.guards, site.blob_url("").rstrip("/")))
    emit(
        FRAMEWORKS_PAGE,
        render_frameworks_page(
            taxonomy, site.parity, entry_href=lambda entry_id: relative_link(FRAMEWORKS_PAGE, entry_page(entry_id))
        ),
    )
    # The site's text for agents (https://llmstxt.org): taxonomy, summaries, run commands, rows.
    emit(LLMS_FILE, render_llms_txt(site))
    # The machine-readable release (`kdatlas export`), downloadable from the site; kd.bib is
    # the same file the bibliography page links to.
    for name, text in release_files(taxonomy, site.bibliography).items():
        if name != BIB_DOWNLOAD or site.bibliography.entries:
            emit(name, text)
    return Generated(written, problems + api_problems(site))


def write_pages(root: Path, out_dir: Path) -> Generated:
    """Standalone generation: write every generated page as a real file under ``out_dir``."""

    def write(path: str, text: str) -> None:
        target = out_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    return generate_pages(root, write)
