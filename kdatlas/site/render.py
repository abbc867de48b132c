"""The Jinja2 environment of the page templates (``kdatlas/site/templates/``).

Jinja2 comes with MkDocs but does not depend on it, so the same templates serve a successor
generator. Templates produce Markdown, so nothing is HTML-escaped automatically; values placed
in table cells go through the ``cell`` filter. A variable a template names but the view model
lacks is an error (`StrictUndefined`), not an empty string on a published page.
"""

from __future__ import annotations

from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined

from kdatlas.site.links import cell, one_line, yaml_quote

TEMPLATE_PACKAGE = "kdatlas.site"
TEMPLATE_FOLDER = "templates"


@cache
def environment() -> Environment:
    """The shared environment; block tags take their own line out with them."""
    env = Environment(
        loader=PackageLoader(TEMPLATE_PACKAGE, TEMPLATE_FOLDER),
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(cell=cell, one_line=one_line, yaml_quote=yaml_quote)
    return env


def render(template: str, **context: object) -> str:
    """Render one template (a path under ``templates/``) with ``context``."""
    return environment().get_template(template).render(**context)
