"""MkDocs hooks (``hooks:`` in mkdocs.yml): what a static mkdocs.yml cannot say by itself.

* ``tags_allowed`` of Material's tags plugin comes from ``taxonomy/vocabulary.yaml``, so a tag
  outside the controlled vocabulary fails the strict build;
* the ``Taxonomy`` item of the nav (``- Taxonomy: taxonomy/index.md``) is expanded into the
  generated tree of branch sections and entry pages (see `kdatlas.site.generate.build_nav`);
* redirect stubs left by renamed entries are kept out of the nav without a warning.

Benchmark tables reach the hand-written pages through ``pymdownx.snippets``
(``--8<-- "benchmarks/..."``, configured in mkdocs.yml), not through a hook.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import Files, InclusionLevel

from kdatlas.site.generate import build_nav
from kdatlas.site.links import TAXONOMY_PAGE, entry_page
from kdatlas.taxonomy import load_taxonomy

log = logging.getLogger("mkdocs.plugins.kdatlas")


def _expand_nav(items: list[object], subtree: list[object]) -> bool:
    """Replace the nav item that points at the taxonomy index with the generated subtree."""
    for index, item in enumerate(items):
        if isinstance(item, dict):
            for title, value in item.items():
                if value == TAXONOMY_PAGE:
                    items[index] = {title: subtree}
                    return True
                if isinstance(value, list) and _expand_nav(value, subtree):
                    return True
    return False


@event_priority(100)  # before the tags plugin reads tags_allowed in its own on_config
def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Inject the tag vocabulary and the generated taxonomy nav."""
    root = Path(config.config_file_path).parent
    taxonomy, _ = load_taxonomy(root)  # problems are reported once, by docs/gen_pages.py
    tags_plugin = config.plugins.get("material/tags") or config.plugins.get("tags")
    if tags_plugin is not None:
        from material.plugins.tags.structure.tag.options import TagSet

        if taxonomy.vocabulary is None:
            log.warning("taxonomy/vocabulary.yaml did not load: no tags are allowed")
            names: list[str] = []
        else:
            names = sorted(taxonomy.vocabulary.tags)
        tags_plugin.config.tags_allowed = TagSet().validate(names or ["no-tags-allowed"])
    if config.nav is not None and not _expand_nav(config.nav, build_nav(taxonomy)):
        log.warning(f"mkdocs.yml nav has no item '{TAXONOMY_PAGE}' to expand into the taxonomy tree")
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Keep the redirect stubs of renamed entries out of the nav (no 'not in nav' warning)."""
    taxonomy, _ = load_taxonomy(Path(config.config_file_path).parent)
    for entry in taxonomy.entries.values():
        for old_id in entry.former_ids:
            file = files.get_file_from_path(entry_page(old_id))
            if file is not None:
                file.inclusion = InclusionLevel.NOT_IN_NAV
    return files
