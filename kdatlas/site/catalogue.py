"""The statistics page and the filterable catalogue of all entries.

Both are generated from the same numbers as `kdatlas stats` (`kdatlas.site.stats`), so the site cannot
drift from the data. Links are passed in as functions (as for the mind map), which keeps this
module free of page-layout knowledge.

The catalogue is a plain HTML table; each row carries its branch, year, venue series, tags and
status as ``data-*`` attributes, and ``docs/javascripts/catalogue.js`` filters the rows in the
browser (no server, works offline). Without JavaScript the full table is still there.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from kdatlas.model import Entry, Placement, Status
from kdatlas.site.stats import TaxonomyStats, venue_series
from kdatlas.taxonomy import Taxonomy

Href = Callable[[str], str]

STATUS_TEXT = {Status.implemented: "implemented", Status.planned: "planned", Status.not_applicable: "—"}
PLACEMENT_TEXT = {
    Placement.in_survey: "in the survey",
    Placement.beyond_survey: "beyond the survey",
    Placement.survey_itself: "survey",
}
FILTERS = (
    ("branch", "Branch"),
    ("year", "Year"),
    ("venue", "Venue"),
    ("tag", "Tag"),
    ("status", "Status"),
    ("placement", "Survey"),
)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{round(100 * value)} %"


def render_branch_table(stats: TaxonomyStats, branch_href: Href) -> str:
    """Entries, implementation coverage and survey placement per branch (indented by depth)."""
    lines = [
        "| Branch | Entries | Implemented | Planned | N/A | Coverage | In survey | Beyond |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for branch in stats.branches:
        indent = "&emsp;" * branch.depth
        lines.append(
            f"| {indent}[{branch.name}]({branch_href(branch.branch)}) | {branch.entries} | "
            f"{branch.implemented} | {branch.planned} | {branch.not_applicable} | "
            f"{_percent(branch.coverage)} | {branch.in_survey} | {branch.beyond_survey} |"
        )
    status = stats.by_status
    implementable = status.get("implemented", 0) + status.get("planned", 0)
    coverage = status.get("implemented", 0) / implementable if implementable else None
    lines.append(
        f"| **All** | **{stats.total}** | **{status.get('implemented', 0)}** | "
        f"**{status.get('planned', 0)}** | **{status.get('not-applicable', 0)}** | "
        f"**{_percent(coverage)}** | **{stats.by_placement.get('in-survey', 0)}** | "
        f"**{stats.by_placement.get('beyond-survey', 0)}** |"
    )
    return "\n".join(lines)


def render_count_table(title: str, counts: dict[str, int], total: int) -> str:
    """A two-column count table with shares."""
    lines = [f"| {title} | Entries | Share |", "|---|--:|--:|"]
    for name, count in counts.items():
        lines.append(f"| {escape(str(name))} | {count} | {_percent(count / total if total else None)} |")
    return "\n".join(lines)


def timeline_svg(stats: TaxonomyStats) -> str:
    """Entries per year as stacked bars (in the survey / beyond it), inline SVG with CSS classes."""
    years = list(range(min(stats.by_year), max(stats.by_year) + 1)) if stats.by_year else []
    if not years:
        return ""
    bar, gap, height, top, bottom = 34, 10, 180, 18, 34
    peak = max(stats.by_year.values())
    width = len(years) * (bar + gap) + gap
    parts = [
        f'<svg class="kd-timeline" role="img" viewBox="0 0 {width} {top + height + bottom}" '
        f'width="{width}" height="{top + height + bottom}" xmlns="http://www.w3.org/2000/svg">',
        "<title>Entries per year of publication, split by placement in the Yang et al. survey</title>",
    ]
    for index, year in enumerate(years):
        x = gap + index * (bar + gap)
        counts = stats.by_year_placement.get(year, {})
        y = top + height
        for placement, css in (("in-survey", "in"), ("survey-itself", "in"), ("beyond-survey", "beyond")):
            count = counts.get(placement, 0)
            if not count:
                continue
            h = height * count / peak
            y -= h
            parts.append(
                f'<rect class="kd-bar-{css}" x="{x}" y="{y:.1f}" width="{bar}" height="{h:.1f}">'
                f"<title>{year}: {count} {PLACEMENT_TEXT[Placement(placement)]}</title></rect>"
            )
        total = stats.by_year.get(year, 0)
        if total:
            parts.append(
                f'<text class="kd-bar-count" x="{x + bar / 2}" y="{y - 4:.1f}" text-anchor="middle">{total}</text>'
            )
        label = f"'{str(year)[2:]}" if len(years) > 14 else str(year)
        parts.append(
            f'<text class="kd-bar-label" x="{x + bar / 2}" y="{top + height + 16}" text-anchor="middle">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_statistics_page(stats: TaxonomyStats, branch_href: Href, catalogue_link: str) -> str:
    """The statistics page (Markdown with inline SVG)."""
    years = f"{min(stats.by_year)}–{max(stats.by_year)}" if stats.by_year else "—"
    return (
        "\n\n".join(
            [
                "---\ntitle: Statistics\nhide:\n  - navigation\n---",
                "# Statistics",
                f"Generated from `taxonomy/` at build time — the same numbers as `kdatlas stats` and "
                f"`kdatlas list`. **{stats.total} entries** from {years}; "
                f"{stats.by_status.get('implemented', 0)} have a reference implementation. "
                f"Browse or filter them all in the [catalogue]({catalogue_link}).",
                "## Per branch and implementation coverage",
                "Coverage is the implemented share of the entries that can be implemented (surveys, "
                "evaluation studies, applications and directions are *not applicable*).",
                render_branch_table(stats, branch_href),
                "## Timeline",
                '<div class="kd-chart" markdown>\n\n'
                + timeline_svg(stats)
                + '\n\n<span class="kd-key kd-key-in"></span> in the survey · '
                '<span class="kd-key kd-key-beyond"></span> beyond the survey\n\n</div>',
                render_count_table("Year", {str(y): c for y, c in stats.by_year.items()}, stats.total),
                "## Per venue",
                "Venues are grouped by series, without the year (e.g. *ACL 2023* and *ACL 2024* are *ACL*).",
                render_count_table("Venue", stats.by_venue_series, stats.total),
                "## Per kind, placement and tag",
                render_count_table("Kind", stats.by_kind, stats.total),
                render_count_table(
                    "Placement",
                    {PLACEMENT_TEXT[Placement(p)]: c for p, c in stats.by_placement.items()},
                    stats.total,
                ),
                render_count_table("Tag", stats.by_tag, stats.total),
            ]
        )
        + "\n"
    )


def _options(name: str, values: list[str]) -> str:
    items = "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in values)
    return f'<option value="">all</option>{items}'


def render_catalogue_page(taxonomy: Taxonomy, entry_href: Href, branch_name: Callable[[str], str]) -> str:
    """All entries in one table with filters (branch, year, venue, tag, status, survey placement)."""
    entries: list[Entry] = taxonomy.ordered_entries()
    values: dict[str, set[str]] = {name: set() for name, _ in FILTERS}
    rows = []
    for entry in entries:
        attributes = {
            "branch": entry.branch,
            "year": str(entry.year),
            "venue": venue_series(entry.venue),
            "tag": " ".join(entry.tags),
            "status": entry.status.value,
            "placement": entry.survey.placement.value,
        }
        for name, value in attributes.items():
            values[name].update(value.split() if name == "tag" else [value])
        # A branch filter also matches sub-branches, so offer the ancestors as choices too.
        parts = entry.branch.split("/")
        values["branch"].update("/".join(parts[: i + 1]) for i in range(len(parts)))
        data = " ".join(f'data-{name}="{escape(value)}"' for name, value in attributes.items())
        tags = " ".join(f"<code>{escape(tag)}</code>" for tag in entry.tags)
        rows.append(
            f"<tr {data}>"
            f'<td><a href="{escape(entry_href(entry.id))}">{escape(entry.name)}</a></td>'
            f"<td>{escape(branch_name(entry.branch))}</td>"
            f"<td>{entry.year}</td><td>{escape(entry.venue)}</td><td>{tags}</td>"
            f"<td>{STATUS_TEXT[entry.status]}</td><td>{PLACEMENT_TEXT[entry.survey.placement]}</td></tr>"
        )
    controls = []
    for name, label in FILTERS:
        ordered = sorted(values[name], reverse=(name == "year"))
        controls.append(
            f'<label>{label} <select data-filter="{name}" aria-label="Filter by {label.lower()}">'
            f"{_options(name, ordered)}</select></label>"
        )
    controls.append(
        '<label>Text <input type="search" data-filter="text" placeholder="name, venue…" '
        'aria-label="Filter by text"></label>'
    )
    return (
        "---\ntitle: Catalogue\nhide:\n  - navigation\n  - toc\n---\n\n# Catalogue\n\n"
        f"All {len(entries)} entries. Choose filters to narrow the table; the address bar keeps them "
        "(e.g. `?tag=on-policy&status=implemented`), so a filtered view can be shared.\n\n"
        f'<div class="kd-filters">{"".join(controls)}</div>\n\n'
        f'<p class="kd-count" aria-live="polite">{len(entries)} of {len(entries)} entries</p>\n\n'
        '<div class="kd-catalogue"><table>'
        "<thead><tr><th>Entry</th><th>Branch</th><th>Year</th><th>Venue</th><th>Tags</th>"
        "<th>Status</th><th>Survey</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>\n"
    )
