"""mkdocs-gen-files entry point: render the taxonomy pages into the build (nothing lands in docs/).

All the work is in :mod:`kdatlas.site`, a plain Python step that also runs standalone
(``kdatlas.site.generate.write_pages``). Data problems are logged as warnings, which fail a strict build.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mkdocs_gen_files

from kdatlas.site.generate import generate_pages
from kdatlas.site.links import REPO_BRANCH, REPO_URL

log = logging.getLogger("mkdocs.plugins.kdatlas")
config = mkdocs_gen_files.config
root = Path(config.config_file_path).parent


def write(path: str, text: str) -> None:
    """Write one virtual file into the build."""
    with mkdocs_gen_files.open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


generated = generate_pages(
    root, write, mkdocs_gen_files.set_edit_path, (config.repo_url or REPO_URL).rstrip("/"), REPO_BRANCH
)
for problem in generated.problems:
    log.warning(problem.format(root))
log.info(f"kdatlas: generated {len(generated.pages)} files from taxonomy/ and bib/")

# Benchmark plots, published next to the pages that include their tables (docs/fused-losses.md).
for plot in sorted((root / "benchmarks" / "results").glob("*/*.png")):
    with mkdocs_gen_files.open(f"assets/benchmarks/{plot.parent.name}/{plot.name}", "wb") as handle:
        handle.write(plot.read_bytes())
