"""Re-exports kdatlas.site under its former name, until the last imports of ``kdatlas.pages`` move."""

from kdatlas.site.generate import write_pages
from kdatlas.site.indexes import render_kb_citation
from kdatlas.site.links import entry_page

__all__ = ["entry_page", "render_kb_citation", "write_pages"]
