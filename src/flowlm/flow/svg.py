"""Inline SVG line charts for the HTML report: no JavaScript, no external assets, readable offline.

`line_chart(series, ...)` draws every series as a polyline on shared axes. The x and y ranges span all
finite points, with min / max tick labels on both axes and a legend. A series of one point is drawn as
a dot. Non-finite values (NaN, inf, None) are skipped, not drawn as zero.
`points_of(rows, key)` turns `metrics.jsonl` rows into (step, value) points: the last value logged for
each step, since a resumed stage logs its steps again.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any, Iterable, Sequence

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
Point = tuple[float, float]


def points_of(rows: Iterable[dict[str, Any]], key: str) -> list[Point]:
    """(step, value) of `key` in metrics rows, the last value per step, sorted by step; non-finite skipped."""
    by_step: dict[float, float] = {}
    for row in rows:
        v, step = row.get(key), row.get("step")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and isinstance(step, (int, float)):
            by_step[float(step)] = float(v)
    return sorted(by_step.items())


def thin(points: Sequence[Point], limit: int = 400) -> list[Point]:
    """At most `limit` points, evenly strided, the last one always kept."""
    if len(points) <= limit:
        return list(points)
    stride = math.ceil(len(points) / limit)
    out = list(points[::stride])
    return out if out[-1] == points[-1] else [*out, points[-1]]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    """Map v in [lo, hi] to [a, b] (the middle of [a, b] when the range is empty)."""
    return (a + b) / 2 if hi == lo else a + (v - lo) / (hi - lo) * (b - a)


def line_chart(series: dict[str, Sequence[Point]], *, title: str, xlabel: str = "step", ylabel: str = "",
               width: int = 640, height: int = 240) -> str:
    """An `<svg>` with one polyline per non-empty series (or a note when every series is empty)."""
    series = {name: thin([(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)])
              for name, pts in series.items()}
    series = {name: pts for name, pts in series.items() if pts}
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<title>{escape(title)}</title>')
    if not series:
        return head + f'<text x="10" y="20">{escape(title)}: no data</text></svg>'
    left, right, top, bottom = 64, width - 12, 28, height - 36
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    parts = [head, f'<text x="{left}" y="16" class="title">{escape(title)}</text>',
             f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#888"/>',
             f'<text x="{left}" y="{bottom + 14}" font-size="11">{_fmt(x0)}</text>',
             f'<text x="{right}" y="{bottom + 14}" font-size="11" text-anchor="end">{_fmt(x1)}</text>',
             f'<text x="{(left + right) / 2}" y="{bottom + 28}" font-size="11" text-anchor="middle">{escape(xlabel)}</text>',
             f'<text x="{left - 4}" y="{bottom}" font-size="11" text-anchor="end">{_fmt(y0)}</text>',
             f'<text x="{left - 4}" y="{top + 8}" font-size="11" text-anchor="end">{_fmt(y1)}</text>']
    if ylabel:
        parts.append(f'<text x="12" y="{(top + bottom) / 2}" font-size="11" transform="rotate(-90 12 '
                     f'{(top + bottom) / 2})" text-anchor="middle">{escape(ylabel)}</text>')
    for k, (name, pts) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        coords = [(scale(x, x0, x1, left, right), scale(y, y0, y1, bottom, top)) for x, y in pts]
        if len(coords) == 1:
            parts.append(f'<circle cx="{coords[0][0]:.1f}" cy="{coords[0][1]:.1f}" r="3" fill="{color}" '
                         f'data-series="{escape(name)}"/>')
        else:
            path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}" '
                         f'data-series="{escape(name)}"/>')
        parts.append(f'<text x="{right - 4}" y="{top + 12 + 13 * k}" font-size="11" text-anchor="end" '
                     f'fill="{color}">{escape(name)}</text>')
    return "".join(parts) + "</svg>"
