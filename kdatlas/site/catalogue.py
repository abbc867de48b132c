"""The statistics page and the filterable catalogue of all entries.

Both are generated from the same numbers as `kdatlas stats` (`kdatlas.site.stats`), so the site cannot
drift from the data. Links are passed in as functions (as for the mind map), which keeps this
module free of page-layout knowledge.

Python computes the rows and the timeline; ``templates/statistics.md.j2`` and
``templates/catalogue.md.j2`` lay out the pages. The catalogue is a plain HTML table; each row carries its branch, year, venue series, tags and
status as ``data-*`` attributes, and ``docs/javascripts/catalogue.js`` filters the rows in the
browser (no server, works offline). Without JavaScript the full table is still there.
"""

from __future__ import annotations

from collections.abc import Callable

from kdatlas.model import Entry, Placement, Status
from kdatlas.site.render import render
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


def percent(value: float | None) -> str:
    """A share as a whole percentage, or a dash when there is nothing to divide by."""
    return "—" if value is None else f"{round(100 * value)} %"


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
    status = stats.by_status
    implementable = status.get("implemented", 0) + status.get("planned", 0)
    total = stats.total
    return render(
        "statistics.md.j2",
        stats=stats,
        years=f"{min(stats.by_year)}–{max(stats.by_year)}" if stats.by_year else "—",
        coverage=percent(status.get("implemented", 0) / implementable if implementable else None),
        branch_href=branch_href,
        catalogue_link=catalogue_link,
        timeline=timeline_svg(stats),
        percent=percent,
        share=lambda count: percent(count / total if total else None),
        by_placement={PLACEMENT_TEXT[Placement(p)]: c for p, c in stats.by_placement.items()},
    )


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
        rows.append(
            {
                "attributes": attributes,
                "entry": entry,
                "href": entry_href(entry.id),
                "branch": branch_name(entry.branch),
                "status": STATUS_TEXT[entry.status],
                "placement": PLACEMENT_TEXT[entry.survey.placement],
            }
        )
    filters = [(name, label, sorted(values[name], reverse=(name == "year"))) for name, label in FILTERS]
    return render("catalogue.md.j2", rows=rows, filters=filters)
