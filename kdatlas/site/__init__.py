"""The documentation site, generated from the taxonomy and the bibliography.

Python builds view models (`kdatlas.site.entry`, `kdatlas.site.indexes`, `kdatlas.site.snippets`)
and Jinja2 templates in ``kdatlas/site/templates/`` lay out the pages and hold their prose, so a
docs writer edits a ``.md.j2`` file, not code. Nothing here needs MkDocs except
`kdatlas.site.mkdocs_hooks`: `kdatlas.site.generate.generate_pages` takes a ``write(path, text)``
callback and runs inside mkdocs-gen-files (``docs/gen_pages.py``) or standalone
(`kdatlas.site.generate.write_pages`).

URL scheme (paths relative to the docs root; MkDocs serves ``x.md`` at ``x/``):

========================================  =============================================
``index.md``                              home (``templates/home.md.j2``)
``entries/<id>.md``                       one page per entry — flat, so an entry keeps its
                                          URL when it moves to another branch; a renamed
                                          entry leaves ``entries/<former id>.md`` as a redirect
``taxonomy/index.md``                     the whole tree, with counts
``taxonomy/<branch path>/index.md``       one overview per branch
``bibliography.md``, ``kd.bib``           all references; the whole BibTeX file
``tags.md``                               the tag index (Material's tags plugin)
``statistics.md``, ``catalogue.md``       counts and the filterable table of all entries
========================================  =============================================

This ``__init__`` imports nothing, so that loading one part (the math extension, say) does not
load the rest.
"""
