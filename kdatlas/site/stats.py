"""Statistics of the taxonomy: counts per branch, year, venue, status and survey placement.

One computation serves the statistics page, `kdatlas stats` and the tests that check the page
against `kdatlas list`. Venues are grouped into *series* ("ACL 2023" and "ACL 2024" are both
"ACL"; "Findings of ACL 2023" is "Findings of ACL") because counting the exact strings would give
one row per paper.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from kdatlas.model import Entry, Placement, Status
from kdatlas.taxonomy import Taxonomy

_YEAR = re.compile(r"\b(19|20)\d{2}\b")
_PARENTHESES = re.compile(r"\([^)]*\)")


def venue_series(venue: str) -> str:
    """The venue without year or parenthetical remarks: 'Findings of ACL 2023' → 'Findings of ACL'."""
    series = _YEAR.sub("", _PARENTHESES.sub("", venue))
    series = re.sub(r"\s+", " ", series).strip(" ,;-")
    return series or "unspecified"


@dataclass
class BranchStats:
    """Counts for one branch, its sub-branches included."""

    branch: str
    name: str
    depth: int
    entries: int
    implemented: int
    planned: int
    not_applicable: int
    in_survey: int
    beyond_survey: int

    @property
    def coverage(self) -> float | None:
        """Implemented share of the entries that can be implemented (None when there are none)."""
        implementable = self.implemented + self.planned
        return self.implemented / implementable if implementable else None


@dataclass
class TaxonomyStats:
    """Everything the statistics page shows."""

    total: int
    by_status: dict[str, int]
    by_kind: dict[str, int]
    by_placement: dict[str, int]
    by_year: dict[int, int]
    by_year_placement: dict[int, dict[str, int]]
    by_venue_series: dict[str, int]
    by_tag: dict[str, int]
    branches: list[BranchStats] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """A JSON-serialisable form (what `kdatlas stats --json` prints)."""
        data = asdict(self)
        for branch, stats in zip(data["branches"], self.branches, strict=True):
            branch["coverage"] = stats.coverage
        data["by_year"] = {str(year): count for year, count in self.by_year.items()}
        data["by_year_placement"] = {str(year): c for year, c in self.by_year_placement.items()}
        return data


def _branch_stats(taxonomy: Taxonomy, branch_id: str, depth: int) -> BranchStats:
    entries = taxonomy.entries_in(branch_id, recursive=True)
    status = Counter(e.status for e in entries)
    placement = Counter(e.survey.placement for e in entries)
    return BranchStats(
        branch=branch_id,
        name=taxonomy.branches[branch_id].name,
        depth=depth,
        entries=len(entries),
        implemented=status[Status.implemented],
        planned=status[Status.planned],
        not_applicable=status[Status.not_applicable],
        in_survey=placement[Placement.in_survey],
        beyond_survey=placement[Placement.beyond_survey],
    )


def _sorted_counts(counter: Counter[str]) -> dict[str, int]:
    """Most frequent first, ties alphabetically."""
    return dict(sorted(counter.items(), key=lambda item: (-item[1], item[0])))


def compute_stats(taxonomy: Taxonomy) -> TaxonomyStats:
    """Count the loaded taxonomy."""
    entries: list[Entry] = taxonomy.ordered_entries()
    by_year_placement: dict[int, Counter[str]] = {}
    for entry in entries:
        by_year_placement.setdefault(entry.year, Counter())[entry.survey.placement.value] += 1
    branches = [_branch_stats(taxonomy, branch.id, branch.id.count("/")) for branch in taxonomy.walk()]
    return TaxonomyStats(
        total=len(entries),
        by_status=_sorted_counts(Counter(e.status.value for e in entries)),
        by_kind=_sorted_counts(Counter(e.kind.value for e in entries)),
        by_placement=_sorted_counts(Counter(e.survey.placement.value for e in entries)),
        by_year=dict(sorted(Counter(e.year for e in entries).items())),
        by_year_placement={year: dict(c) for year, c in sorted(by_year_placement.items())},
        by_venue_series=_sorted_counts(Counter(venue_series(e.venue) for e in entries)),
        by_tag=_sorted_counts(Counter(tag for e in entries for tag in e.tags)),
        branches=branches,
    )
