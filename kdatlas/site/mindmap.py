"""The taxonomy mind map, drawn from the data as inline SVG (no Mermaid, no CDN, no JavaScript).

Layout: a horizontal tree. The root sits on the left, each column to the right is one level of
branches, and the entries of a branch are a compact block of chips next to it — one column for
a few entries, up to three columns for many — so ~100 entries stay around a thousand pixels tall.
Every branch keeps its own vertical band, so nothing overlaps whatever the depth. Each top-level
branch gets a colour; implemented entries get a filled dot and a solid outline, planned ones a
hollow dot and a dashed outline. Colours live in CSS classes (``docs/stylesheets/extra.css``) so
the map follows the light/dark palette.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape

from kdatlas.model import Branch, Entry, Status
from kdatlas.taxonomy import Taxonomy

ROOT_LABEL = "KD for LLMs"
ROOT_W = 116
BRANCH_W = 200
CHIP_W = 228
GAP = 34
ROW = 22
LINE = 15
BAND_GAP = 10
PAD = 8
CHAR_W = 6.6  # average glyph width at the chip font size, for truncation only
STATUS_CLASS = {Status.implemented: "impl", Status.planned: "planned", Status.not_applicable: "na"}


@dataclass
class _Box:
    """A laid-out node: position, size and what it draws."""

    x: float
    y: float
    w: float
    h: float
    children: list[_Box] = field(default_factory=list)
    branch: Branch | None = None
    entries: list[Entry] = field(default_factory=list)
    colour: int = 0

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


def block_columns(count: int) -> int:
    """How many chip columns an entry block of ``count`` entries uses."""
    return 1 if count <= 6 else 2 if count <= 16 else 3


def truncate(text: str, width: float) -> str:
    """Shorten ``text`` with an ellipsis to fit ``width`` pixels (estimated)."""
    limit = max(4, int(width / CHAR_W))
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _wrap(text: str, width: float) -> list[str]:
    lines = textwrap.wrap(text, max(6, int(width / 7.4))) or [text]
    return [lines[0], truncate(" ".join(lines[1:]), width)] if len(lines) > 2 else lines


def _layout_branch(taxonomy: Taxonomy, branch: Branch, x: float, y: float, colour: int) -> _Box:
    label_lines = _wrap(branch.name, BRANCH_W - 2 * PAD - 24)
    node_h = max(28.0, len(label_lines) * LINE + 12)
    child_x = x + BRANCH_W + GAP
    children: list[_Box] = []
    cursor = y
    for sub in taxonomy.children(branch.id):
        child = _layout_branch(taxonomy, sub, child_x, cursor, colour)
        children.append(child)
        cursor = _bottom(child) + BAND_GAP
    entries = taxonomy.entries_in(branch.id)
    if entries:
        rows = math.ceil(len(entries) / block_columns(len(entries)))
        block = _Box(
            child_x,
            cursor,
            block_columns(len(entries)) * (CHIP_W + 6),
            rows * ROW,
            entries=entries,
            colour=colour,
        )
        children.append(block)
        cursor = block.y + block.h + BAND_GAP
    if children:
        middle = (children[0].cy + children[-1].cy) / 2
        node_y = max(y, middle - node_h / 2)
    else:
        node_y = y
    return _Box(x, node_y, BRANCH_W, node_h, children, branch=branch, colour=colour)


def _bottom(box: _Box) -> float:
    return max([box.y + box.h, *[_bottom(child) for child in box.children]])


def _right(box: _Box) -> float:
    return max([box.x + box.w, *[_right(child) for child in box.children]])


def _edge(x1: float, y1: float, x2: float, y2: float, colour: int) -> str:
    mid = (x1 + x2) / 2
    return (
        f'<path class="kd-mm-edge kd-mm-c{colour}" '
        f'd="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"/>'
    )


def _draw_block(block: _Box, entry_href: Callable[[str], str]) -> list[str]:
    columns = block_columns(len(block.entries))
    rows = math.ceil(len(block.entries) / columns)
    out = [
        f'<path class="kd-mm-bracket kd-mm-c{block.colour}" '
        f'd="M{block.x - 6:.1f},{block.y + 4:.1f} V{block.y + block.h - 4:.1f}"/>'
    ]
    for index, entry in enumerate(block.entries):
        column, row = divmod(index, rows)
        x = block.x + column * (CHIP_W + 6)
        y = block.y + row * ROW
        status = STATUS_CLASS[entry.status]
        tip = f"{entry.name} ({entry.year}) — {entry.status.value}"
        out.append(
            f'<a class="kd-mm-entry kd-mm-{status} kd-mm-c{block.colour}" href="{escape(entry_href(entry.id))}" '
            f'data-entry="{escape(entry.id)}"><title>{escape(tip)}</title>'
            f'<rect x="{x:.1f}" y="{y + 2:.1f}" width="{CHIP_W}" height="{ROW - 4}" rx="9"/>'
            f'<circle cx="{x + 10:.1f}" cy="{y + ROW / 2:.1f}" r="3.6"/>'
            f'<text x="{x + 19:.1f}" y="{y + ROW / 2 + 4:.1f}">{escape(truncate(entry.name, CHIP_W - 26))}</text></a>'
        )
    return out


def _draw(box: _Box, entry_href: Callable[[str], str], branch_href: Callable[[str], str]) -> list[str]:
    """SVG for a branch box (its edges, node and subtree) or for an entry block."""
    branch = box.branch
    if branch is None:
        return _draw_block(box, entry_href)
    out = [
        _edge(box.x + box.w, box.cy, child.x - (6 if child.branch is None else 0), child.cy, box.colour)
        for child in box.children
    ]
    lines = _wrap(branch.name, BRANCH_W - 2 * PAD - 24)
    top = box.cy - (len(lines) - 1) * LINE / 2 + 4.5
    text = "".join(
        f'<tspan x="{box.x + PAD + 2:.1f}" y="{top + i * LINE:.1f}">{escape(line)}</tspan>'
        for i, line in enumerate(lines)
    )
    count = len(_all_entries(box))
    out.append(
        f'<a class="kd-mm-branch kd-mm-depth{min(branch.depth, 2)} kd-mm-c{box.colour}" '
        f'href="{escape(branch_href(branch.id))}" data-branch="{escape(branch.id)}">'
        f"<title>{escape(branch.name)}: {count} entries</title>"
        f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w}" height="{box.h:.1f}" rx="7"/>'
        f"<text>{text}</text>"
        f'<text class="kd-mm-count" x="{box.x + box.w - PAD:.1f}" y="{box.cy + 4.5:.1f}">{count}</text></a>'
    )
    for child in box.children:
        out += _draw(child, entry_href, branch_href)
    return out


def _all_entries(box: _Box) -> list[Entry]:
    found = list(box.entries)
    for child in box.children:
        found += _all_entries(child)
    return found


def render_mindmap(
    taxonomy: Taxonomy,
    entry_href: Callable[[str], str],
    branch_href: Callable[[str], str],
) -> str:
    """The mind map as one ``<div class="kd-mindmap">`` holding an inline ``<svg>``.

    Args:
        taxonomy: The loaded tree.
        entry_href: Entry id → link from the page that embeds the map.
        branch_href: Branch id → link from that page.

    Returns:
        HTML without blank lines (safe as a raw HTML block in Markdown).
    """
    top = taxonomy.children(None)
    x = PAD + ROOT_W + GAP
    cursor = float(PAD)
    boxes = []
    for colour, branch in enumerate(top):
        box = _layout_branch(taxonomy, branch, x, cursor, colour % 8)
        boxes.append(box)
        cursor = _bottom(box) + BAND_GAP * 2
    height = max(cursor - BAND_GAP * 2 + PAD, 60)
    width = max([_right(box) for box in boxes] + [x + BRANCH_W]) + PAD
    root_y = ((boxes[0].cy + boxes[-1].cy) / 2 if boxes else height / 2) - 20
    total = len(taxonomy.entries)
    implemented = sum(e.status is Status.implemented for e in taxonomy.entries.values())
    parts = [
        f'<svg class="kd-mindmap-svg" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'width="{width:.0f}" height="{height:.0f}" role="group" '
        f'aria-label="Taxonomy mind map: {len(taxonomy.branches)} branches, {total} entries">'
    ]
    for box in boxes:
        parts.append(_edge(PAD + ROOT_W, root_y + 20, box.x, box.cy, box.colour))
    parts.append(
        f'<g class="kd-mm-root"><rect x="{PAD}" y="{root_y:.1f}" width="{ROOT_W}" height="40" rx="20"/>'
        f'<text x="{PAD + ROOT_W / 2:.1f}" y="{root_y + 25:.1f}">{escape(ROOT_LABEL)}</text></g>'
    )
    for box in boxes:
        parts += _draw(box, entry_href, branch_href)
    parts.append("</svg>")
    legend = (
        '<p class="kd-mm-legend"><span class="kd-mm-key kd-mm-impl"></span> implemented '
        '<span class="kd-mm-key kd-mm-planned"></span> planned '
        '<span class="kd-mm-key kd-mm-na"></span> nothing to run (survey, application, direction) · '
        f"{implemented} of {total} entries runnable · click a node to open its page</p>"
    )
    return '<div class="kd-mindmap" markdown="0">' + "".join(parts) + "</div>\n" + legend
