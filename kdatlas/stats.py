"""Re-exports kdatlas.site.stats under its former name, until the last imports of ``kdatlas.stats`` move."""

from kdatlas.site.stats import BranchStats, TaxonomyStats, compute_stats, venue_series

__all__ = ["BranchStats", "TaxonomyStats", "compute_stats", "venue_series"]
