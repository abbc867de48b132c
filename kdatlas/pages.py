"""Re-exports kdatlas.site under its former name, until the last imports of ``kdatlas.pages`` move."""

from kdatlas.site.generate import generate_pages, write_pages
from kdatlas.site.indexes import render_kb_citation
from kdatlas.site.links import REPO_BRANCH, REPO_URL, branch_page, entry_page

__all__ = [
    "REPO_BRANCH",
    "REPO_URL",
    "branch_page",
    "entry_page",
    "generate_pages",
    "render_kb_citation",
    "write_pages",
]
