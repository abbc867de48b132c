"""Re-exports kdatlas.site.stats under its former name, until the last imports of ``kdatlas.stats`` move."""

from kdatlas.site.stats import compute_stats

__all__ = ["compute_stats"]
