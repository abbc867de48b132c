"""Small inline SVG plots for the generated pages: no plotting library, no JavaScript, no files.

Two kinds: a scatter of labelled points (proxy vs golden, cost vs quality) and an interval chart
(one row per item: a mean with its 95% interval, and a reference line). Colours come from
Material's CSS variables, so the plots follow the light and dark palettes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT, MARGIN = 640, 360, 56
FOREGROUND = "var(--md-default-fg-color--light)"
ACCENT = "var(--md-accent-fg-color)"
PRIMARY = "var(--md-primary-fg-color)"


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str
    highlight: bool = False


@dataclass(frozen=True)
class Span:
    """One row of an interval chart: ``mean`` and its interval (``low``/``high`` ``None``: no interval)."""

    label: str
    mean: float
    low: float | None
    high: float | None
    highlight: bool = False


def _scale(low: float, high: float, start: float, end: float):
    if high == low:
        low, high = low - 1, high + 1
    pad = (high - low) * 0.06
    low, high = low - pad, high + pad
    return lambda v: start + (v - low) / (high - low) * (end - start), (low, high)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def _frame(title: str, x_label: str, y_label: str, height: int, body: list[str]) -> str:
    return "\n".join([
        f'<svg class="kd-plot" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="sans-serif">',
        f"<title>{escape(title)}</title>",
        *body,
        f'<text x="{WIDTH / 2}" y="{height - 8}" text-anchor="middle" fill="{FOREGROUND}">{escape(x_label)}</text>',
        f'<text x="14" y="{height / 2}" text-anchor="middle" fill="{FOREGROUND}" '
        f'transform="rotate(-90 14 {height / 2})">{escape(y_label)}</text>' if y_label else "",
        "</svg>",
    ])  # fmt: skip


def scatter(points: Sequence[Point], *, title: str, x_label: str, y_label: str) -> str:
    """Labelled points; highlighted ones drawn in the accent colour."""
    if not points:
        return ""
    x, (x_low, x_high) = _scale(min(p.x for p in points), max(p.x for p in points), MARGIN, WIDTH - 16)
    y, (y_low, y_high) = _scale(min(p.y for p in points), max(p.y for p in points), HEIGHT - MARGIN, 16)
    body = [
        f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - 16}" y2="{HEIGHT - MARGIN}" stroke="{FOREGROUND}"/>',
        f'<line x1="{MARGIN}" y1="16" x2="{MARGIN}" y2="{HEIGHT - MARGIN}" stroke="{FOREGROUND}"/>',
    ]
    for tick in _ticks(x_low, x_high):
        body.append(f'<text x="{x(tick):.1f}" y="{HEIGHT - MARGIN + 16}" text-anchor="middle" fill="{FOREGROUND}">{tick:.3g}</text>')
    for tick in _ticks(y_low, y_high):
        body.append(f'<text x="{MARGIN - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" fill="{FOREGROUND}">{tick:.3g}</text>')
    for p in points:
        colour = ACCENT if p.highlight else PRIMARY
        body.append(f'<circle cx="{x(p.x):.1f}" cy="{y(p.y):.1f}" r="4" fill="{colour}"><title>{escape(p.label)}: '
                    f"{p.x:.3f}, {p.y:.3f}</title></circle>")  # fmt: skip
        body.append(f'<text x="{x(p.x) + 6:.1f}" y="{y(p.y) - 5:.1f}" fill="{FOREGROUND}" font-size="9">{escape(p.label)}</text>')
    return _frame(title, x_label, y_label, HEIGHT, body)


def intervals(spans: Sequence[Span], *, title: str, x_label: str, reference: float | None = 0.0) -> str:
    """One row per span (mean dot, interval bar), with a vertical line at ``reference``."""
    if not spans:
        return ""
    row, label_width = 20, 190
    height = MARGIN + row * len(spans)
    values = [v for s in spans for v in (s.mean, s.low, s.high) if v is not None]
    values += [reference] if reference is not None else []
    x, (low, high) = _scale(min(values), max(values), label_width, WIDTH - 16)
    body = []
    if reference is not None:
        body.append(f'<line x1="{x(reference):.1f}" y1="8" x2="{x(reference):.1f}" y2="{height - MARGIN + 12}" '
                    f'stroke="{FOREGROUND}" stroke-dasharray="4 3"/>')  # fmt: skip
    for tick in _ticks(low, high):
        body.append(f'<text x="{x(tick):.1f}" y="{height - MARGIN + 26}" text-anchor="middle" fill="{FOREGROUND}">{tick:.3g}</text>')
    for i, s in enumerate(spans):
        middle = 16 + i * row
        colour = ACCENT if s.highlight else PRIMARY
        body.append(f'<text x="{label_width - 8}" y="{middle + 4}" text-anchor="end" fill="{FOREGROUND}">{escape(s.label)}</text>')
        if s.low is not None and s.high is not None:
            body.append(f'<line x1="{x(s.low):.1f}" y1="{middle}" x2="{x(s.high):.1f}" y2="{middle}" stroke="{colour}" stroke-width="2"/>')
        body.append(f'<circle cx="{x(s.mean):.1f}" cy="{middle}" r="4" fill="{colour}"><title>{escape(s.label)}: '
                    f"{s.mean:.3f}</title></circle>")  # fmt: skip
    return _frame(title, x_label, "", height, body)
