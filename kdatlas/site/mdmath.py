"""Server-side math for Python-Markdown: ``$...$`` and ``$$...$$`` become MathML (latex2mathml).

The site must work offline, so no MathJax/KaTeX from a CDN: Chromium, Firefox and Safari render
MathML Core natively. Register the extension as ``kdatlas.site.mdmath`` in ``markdown_extensions``.

Rules (close to pandoc's ``tex_math_dollars``):

* ``$$ ... $$`` is display math, either as its own block (it may span several lines) or inline
  in a paragraph;
* ``$x$`` is inline math when the opening ``$`` is not followed by a space, the closing one is not
  preceded by a space and not followed by a digit — so "costs $5 or $6" stays text;
* ``\\$`` is a literal dollar; code spans and fenced code are never touched (the code-span pattern
  runs first and fences are stashed by their preprocessor before any of this runs).

An expression that latex2mathml cannot convert — a syntax error, or a command it does not know
and would silently print as text — raises `MathError` naming the expression, so a strict
build stops instead of shipping broken math. MkDocs prefixes the message with the page.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as etree
from typing import Any

from latex2mathml.converter import convert
from markdown import Markdown
from markdown.blockparser import BlockParser
from markdown.blockprocessors import BlockProcessor
from markdown.extensions import Extension
from markdown.inlinepatterns import InlineProcessor

try:  # Under MkDocs a BuildError aborts cleanly (message, no traceback); elsewhere a ValueError.
    from mkdocs.exceptions import BuildError as _ErrorBase
except ImportError:  # pragma: no cover - mkdocs is the docs extra
    _ErrorBase = ValueError  # type: ignore[assignment,misc]

# A control word latex2mathml did not recognise comes back verbatim as the text of a token element.
_UNKNOWN_COMMAND = re.compile(r">(\\[A-Za-z]+)<")
# Standard LaTeX that latex2mathml lacks, rewritten to forms it renders correctly.
_REWRITES = (
    (re.compile(r"\\arg(?![A-Za-z])"), r"\\operatorname{arg}"),
    (re.compile(r"\\operatorname\*"), r"\\operatorname"),  # limits placement is lost, the text is right
)
_DISPLAY_INLINE = r"(?<!\\)\$\$(?P<body>(?:[^$\\]|\\.)+?)\$\$"
_INLINE = r"(?<![\\$])\$(?![\s$])(?P<body>(?:[^$\\]|\\.)+?)(?<![\s\\])\$(?![\d$])"


class MathError(_ErrorBase, ValueError):  # type: ignore[misc,valid-type]
    """A LaTeX expression that cannot be rendered to MathML."""

    def __init__(self, latex: str, reason: str) -> None:
        self.latex = latex
        self.reason = reason
        super().__init__(f"cannot render math ${latex}$ to MathML: {reason}")


def latex_to_mathml(latex: str, display: bool = False) -> str:
    """Convert one LaTeX expression (no surrounding dollars) to a ``<math>`` element.

    Args:
        latex: The expression, e.g. ``\\frac{1}{T}``.
        display: Block (display-style) math instead of inline.

    Returns:
        The MathML markup.

    Raises:
        MathError: latex2mathml failed, or the output still contains an unknown ``\\command``.
    """
    body = latex.strip()
    if not body:
        raise MathError(latex, "the expression is empty")
    for pattern, replacement in _REWRITES:
        body = pattern.sub(replacement, body)
    try:
        mathml = convert(body, display="block" if display else "inline")
    except Exception as error:  # latex2mathml raises many unrelated exception types
        raise MathError(latex, f"{type(error).__name__} {error}".strip()) from error
    unknown = sorted(set(_UNKNOWN_COMMAND.findall(mathml)))
    if unknown:
        raise MathError(latex, f"unknown command(s) {', '.join(unknown)}")
    return mathml


class _MathInline(InlineProcessor):
    """``$...$`` (or ``$$...$$`` inside a paragraph) → stashed MathML."""

    def __init__(self, pattern: str, md: Markdown, display: bool) -> None:
        super().__init__(pattern, md)
        self.display = display

    def handleMatch(self, m: re.Match[str], data: str) -> tuple[str, int, int]:
        mathml = latex_to_mathml(m.group("body"), display=self.display)
        return self.md.htmlStash.store(mathml), m.start(0), m.end(0)


class _MathBlock(BlockProcessor):
    """A block that starts with ``$$``: collect blocks up to the closing ``$$``."""

    def __init__(self, parser: BlockParser, md: Markdown) -> None:
        super().__init__(parser)
        self.md = md

    def test(self, parent: etree.Element, block: str) -> bool:
        return block.lstrip().startswith("$$")

    def run(self, parent: etree.Element, blocks: list[str]) -> bool:
        text = blocks[0].lstrip()[2:]
        used = 1
        while "$$" not in text and used < len(blocks):
            text += "\n\n" + blocks[used]
            used += 1
        body, found, rest = text.partition("$$")
        if not found:
            return False  # no closing $$: leave it to the paragraph processor
        del blocks[:used]
        if rest.strip():
            blocks.insert(0, rest.lstrip())
        element = etree.SubElement(parent, "div", {"class": "kd-math"})
        element.text = self.md.htmlStash.store(latex_to_mathml(body, display=True))
        return True


class MathExtension(Extension):
    """Python-Markdown extension: ``$`` and ``$$`` math rendered to MathML at build time."""

    def extendMarkdown(self, md: Markdown) -> None:
        if "$" not in md.ESCAPED_CHARS:
            md.ESCAPED_CHARS = [*md.ESCAPED_CHARS, "$"]
        # Before the indented-code processor (80) would not do: code must win. 75 is after it.
        md.parser.blockprocessors.register(_MathBlock(md.parser, md), "kd_math_block", 75)
        # After code spans (190), before backslash escapes (180) so LaTeX's \{ \, \| stay intact.
        md.inlinePatterns.register(_MathInline(_DISPLAY_INLINE, md, display=True), "kd_math_display", 186)
        md.inlinePatterns.register(_MathInline(_INLINE, md, display=False), "kd_math_inline", 185)


def makeExtension(**kwargs: Any) -> MathExtension:
    """Entry point used by ``markdown_extensions: [kdatlas.site.mdmath]``."""
    return MathExtension(**kwargs)
