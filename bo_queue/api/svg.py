"""Server-rendered SVG charts for the study dashboard: pure functions, no dependencies.

`line_chart(series)` draws one path (and a marker per point) per series, `scatter(points)`
draws dots; both return a complete `<svg>` element as a string, with axes, a few "nice"
ticks, axis labels and an optional title. Every piece of text (titles, labels, series
names, point tooltips) is escaped. Non-finite points are dropped; no points gives a frame
that says "no data yet", and one point (or a flat series) gets a padded range.

Each series path carries `class="series"`, `data-series` (its name) and `data-points` (its
number of points); its `d` attribute has exactly one M/L command per point.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from html import escape

Point = tuple[float, float]

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)

BEST_STYLE = ("point best", 'r="5" fill-opacity="1" stroke="#000" stroke-width="1.5"')
FRONT_STYLE = ("point front", 'r="4.5" fill-opacity="1" stroke="#000" stroke-width="1"')
PLAIN_STYLE = ("point", 'r="3.5" fill-opacity="0.7"')

_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 34, 46
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass(frozen=True)
class Series:
    """A named sequence of (x, y) points; `line=False` draws the markers only."""

    name: str
    points: Sequence[Point]
    color: str | None = None
    line: bool = True
    markers: bool = True


def line_chart(
    series: Sequence[Series],
    *,
    width: int = 560,
    height: int = 280,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    element_id: str | None = None,
    integer_x: bool = False,
) -> str:
    """A line chart of one or more series (a legend when there are several)."""
    clean = [(s, _finite(s.points)) for s in series]
    everything = [p for _, pts in clean for p in pts]
    several = len(clean) > 1
    frame = _Frame(width, height, everything, log_x=False, integer_x=integer_x,
                   top=_TOP + 12 if several else _TOP)
    body: list[str] = []
    for number, (s, pts) in enumerate(clean):
        color = _attr(s.color or PALETTE[number % len(PALETTE)])
        name = _attr(s.name)
        if s.line:
            d = " ".join(
                f"{'M' if i == 0 else 'L'}{frame.x(x):.2f},{frame.y(y):.2f}"
                for i, (x, y) in enumerate(pts)
            )
            body.append(
                f'<path class="series" data-series="{name}" data-points="{len(pts)}" '
                f'd="{d}" fill="none" stroke="{color}" stroke-width="2"/>'
            )
        if s.markers:
            body.extend(
                f'<circle class="point" cx="{frame.x(x):.2f}" cy="{frame.y(y):.2f}" r="3" '
                f'fill="{color}"><title>{escape(s.name)}: ({_num(x)}, {_num(y)})</title></circle>'
                for x, y in pts
            )
    legend = _legend([s for s, _ in clean], width) if several else ""
    return frame.render(
        [*body, legend], title=title, x_label=x_label, y_label=y_label,
        element_id=element_id, kind="line", empty=not everything,
    )


def scatter(
    points: Sequence[Point],
    *,
    width: int = 360,
    height: int = 240,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    labels: Sequence[str] | None = None,
    color: str = PALETTE[0],
    highlight: int | None = None,
    front: Collection[int] = (),
    front_color: str = PALETTE[3],
    log_x: bool = False,
    log_y: bool = False,
    x_ticks: Sequence[tuple[float, str]] | None = None,
    y_ticks: Sequence[tuple[float, str]] | None = None,
    element_id: str | None = None,
) -> str:
    """Dots at `points`; `labels[i]` is point i's tooltip, `highlight` an index drawn
    larger (the best trial, say). `front` are indices drawn in `front_color` and joined
    by a line in x order (`path.front`, a Pareto front). `log_x` / `log_y` put an axis on
    a log scale (points must be positive there); `x_ticks` and `y_ticks` replace the ticks
    with (position, label) pairs (categories)."""
    kept = [
        (i, p) for i, p in enumerate(points)
        if all(math.isfinite(v) for v in p) and (not log_x or p[0] > 0)
        and (not log_y or p[1] > 0)
    ]
    frame = _Frame(width, height, [p for _, p in kept], log_x=log_x, log_y=log_y,
                   x_ticks=x_ticks, y_ticks=y_ticks)
    body = []
    on_front = sorted((p for i, p in kept if i in front))
    if on_front:
        d = " ".join(f"{'M' if n == 0 else 'L'}{frame.x(x):.2f},{frame.y(y):.2f}"
                     for n, (x, y) in enumerate(on_front))
        body.append(f'<path class="front" data-points="{len(on_front)}" d="{d}" fill="none" '
                    f'stroke="{_attr(front_color)}" stroke-width="1.5"/>')
    for i, (x, y) in kept:
        tip = labels[i] if labels is not None and i < len(labels) else f"({_num(x)}, {_num(y)})"
        style = BEST_STYLE if i == highlight else FRONT_STYLE if i in front else PLAIN_STYLE
        fill = _attr(front_color if i in front else color)
        body.append(
            f'<circle class="{style[0]}" cx="{frame.x(x):.2f}" cy="{frame.y(y):.2f}" '
            f'fill="{fill}" {style[1]}><title>{escape(tip)}</title></circle>'
        )
    return frame.render(
        body, title=title, x_label=x_label, y_label=y_label,
        element_id=element_id, kind="scatter", empty=not kept,
    )


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values (steps of 1, 2 or 5 x 10^k) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high < low:
        low, high = high, low
    if high == low:
        return [low]
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [_round(k * step, step) for k in range(first, last + 1)]


def log_ticks(low: float, high: float) -> list[float]:
    """Powers of ten inside [low, high] (positive), or nice ticks if there are fewer than 2."""
    if low <= 0 or high <= 0:
        return nice_ticks(low, high)
    ticks = [10.0**k for k in range(math.ceil(math.log10(low) - 1e-9),
                                    math.floor(math.log10(high) + 1e-9) + 1)]
    return ticks if len(ticks) >= 2 else [low, high]


class _Frame:
    """Maps data to pixels inside the margins and draws the axes."""

    def __init__(
        self,
        width: int,
        height: int,
        points: Sequence[Point],
        *,
        log_x: bool,
        log_y: bool = False,
        integer_x: bool = False,
        x_ticks: Sequence[tuple[float, str]] | None = None,
        y_ticks: Sequence[tuple[float, str]] | None = None,
        top: int = _TOP,
    ) -> None:
        self.width, self.height = max(width, 120), max(height, 90)
        self.top = top
        self.log_x, self.log_y = log_x, log_y
        xs = [math.log10(p[0]) if log_x else p[0] for p in points]
        ys = [math.log10(p[1]) if log_y else p[1] for p in points]
        if x_ticks:
            xs += [math.log10(t) if log_x else t for t, _ in x_ticks if not log_x or t > 0]
        if y_ticks:
            ys += [math.log10(t) if log_y else t for t, _ in y_ticks if not log_y or t > 0]
        self.x0, self.x1 = _span(xs, integer=integer_x or bool(x_ticks))
        self.y0, self.y1 = _span(ys, integer=bool(y_ticks))
        # widen to the outer ticks for a tidy frame; categories get half a slot either side
        if x_ticks:
            self.x0, self.x1 = _pad(self.x0, self.x1)
        elif not log_x:
            self.x0, self.x1 = _widen(self.x0, self.x1)
        if y_ticks:
            self.y0, self.y1 = _pad(self.y0, self.y1)
        elif not log_y:
            self.y0, self.y1 = _widen(self.y0, self.y1)
        self.custom_x = x_ticks
        self.custom_y = y_ticks
        self.integer_x = integer_x

    @property
    def plot_w(self) -> float:
        return float(self.width - _LEFT - _RIGHT)

    @property
    def plot_h(self) -> float:
        return float(self.height - self.top - _BOTTOM)

    def x(self, value: float) -> float:
        v = math.log10(value) if self.log_x else value
        return _LEFT + (v - self.x0) / (self.x1 - self.x0) * self.plot_w

    def y(self, value: float) -> float:
        v = math.log10(value) if self.log_y else value
        return self.top + (self.y1 - v) / (self.y1 - self.y0) * self.plot_h

    def _x_ticks(self) -> list[tuple[float, str]]:
        if self.custom_x is not None:
            return [(t, label) for t, label in self.custom_x if not self.log_x or t > 0]
        if self.log_x:
            ticks = log_ticks(10**self.x0, 10**self.x1)
            return [(t, _num(t)) for t in ticks]
        ticks = nice_ticks(self.x0, self.x1)
        if self.integer_x:
            ticks = [t for t in ticks if t == int(t)] or ticks
        return [(t, _num(t)) for t in ticks]

    def _y_ticks(self) -> list[tuple[float, str]]:
        if self.custom_y is not None:
            return [(t, label) for t, label in self.custom_y if not self.log_y or t > 0]
        if self.log_y:
            return [(t, _num(t)) for t in log_ticks(10**self.y0, 10**self.y1)]
        return [(t, _num(t)) for t in nice_ticks(self.y0, self.y1)]

    def render(
        self,
        body: list[str],
        *,
        title: str,
        x_label: str,
        y_label: str,
        element_id: str | None,
        kind: str,
        empty: bool,
    ) -> str:
        w, h = self.width, self.height
        bottom, right = self.top + self.plot_h, _LEFT + self.plot_w
        ident = f' id="{_attr(element_id)}"' if element_id else ""
        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg"{ident} class="chart {kind}" '
            f'width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
            f'aria-label="{_attr(title or kind + " chart")}" {_FONT}>',
            f'<rect class="plot-area" x="{_LEFT}" y="{self.top}" width="{self.plot_w:.0f}" '
            f'height="{self.plot_h:.0f}" fill="#fff" stroke="#bbb"/>',
        ]
        if title:
            out.append(f'<text class="title" x="{w / 2:.1f}" y="16" text-anchor="middle" '
                       f'font-size="13" font-weight="bold">{escape(title)}</text>')
        if not empty:
            for value, label in self._x_ticks():
                px = self.x(value)
                if _LEFT - 0.5 <= px <= right + 0.5:
                    out.append(
                        f'<line x1="{px:.2f}" y1="{self.top}" x2="{px:.2f}" y2="{bottom:.0f}" '
                        f'stroke="#eee"/><line x1="{px:.2f}" y1="{bottom:.0f}" x2="{px:.2f}" '
                        f'y2="{bottom + 4:.0f}" stroke="#666"/>'
                        f'<text class="tick x" x="{px:.2f}" y="{bottom + 15:.0f}" '
                        f'text-anchor="middle">{escape(label)}</text>'
                    )
            for value, label in self._y_ticks():
                py = self.y(value)
                if self.top - 0.5 <= py <= bottom + 0.5:
                    out.append(
                        f'<line x1="{_LEFT}" y1="{py:.2f}" x2="{right:.0f}" y2="{py:.2f}" '
                        f'stroke="#eee"/><line x1="{_LEFT - 4}" y1="{py:.2f}" x2="{_LEFT}" '
                        f'y2="{py:.2f}" stroke="#666"/>'
                        f'<text class="tick y" x="{_LEFT - 6}" y="{py + 4:.2f}" '
                        f'text-anchor="end">{escape(label)}</text>'
                    )
            out.extend(body)
        else:
            out.append(f'<text class="empty" x="{_LEFT + self.plot_w / 2:.1f}" '
                       f'y="{self.top + self.plot_h / 2:.1f}" text-anchor="middle" '
                       f'fill="#888">no data yet</text>')
        if x_label:
            out.append(f'<text class="label x" x="{_LEFT + self.plot_w / 2:.1f}" '
                       f'y="{h - 8}" text-anchor="middle">{escape(x_label)}</text>')
        if y_label:
            cy = self.top + self.plot_h / 2
            out.append(f'<text class="label y" x="14" y="{cy:.1f}" text-anchor="middle" '
                       f'transform="rotate(-90 14 {cy:.1f})">{escape(y_label)}</text>')
        out.append("</svg>")
        return "".join(out)


def _legend(series: Sequence[Series], width: int) -> str:
    items, x = [], _LEFT + 4
    for number, s in enumerate(series):
        color = _attr(s.color or PALETTE[number % len(PALETTE)])
        swatch = (
            f'<rect x="{x}" y="29" width="10" height="3" fill="{color}"/>' if s.line
            else f'<circle cx="{x + 5}" cy="30.5" r="3" fill="{color}"/>'
        )
        items.append(f'{swatch}<text x="{x + 14}" y="34">{escape(s.name)}</text>')
        x += 24 + 7 * len(s.name)
        if x > width - 40:
            break
    return f'<g class="legend">{"".join(items)}</g>'


def _finite(points: Sequence[Point]) -> list[Point]:
    return [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]


def _span(values: Sequence[float], integer: bool = False) -> tuple[float, float]:
    if not values:
        return (0.0, 1.0)
    low, high = min(values), max(values)
    if high == low:
        pad = 1.0 if integer or low == 0 else abs(low) * 0.1
        return (low - pad, high + pad)
    return (low, high)


def _widen(low: float, high: float) -> tuple[float, float]:
    """Out to the ticks just beyond the data, so the frame starts and ends on a tick."""
    ticks = nice_ticks(low, high)
    if len(ticks) < 2:
        return (low, high)
    step = ticks[1] - ticks[0]
    return (min(low, ticks[0] - (step if ticks[0] > low else 0)),
            max(high, ticks[-1] + (step if ticks[-1] < high else 0)))


def _pad(low: float, high: float) -> tuple[float, float]:
    return (low - 0.5, high + 0.5)


def _round(value: float, step: float) -> float:
    digits = max(0, -math.floor(math.log10(step)) + 1)
    return round(value, digits) + 0.0  # no "-0"


def _num(value: float) -> str:
    """Short and readable: 3, 0.25, 1.5e-05, 1.2e+06."""
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def _attr(text: str) -> str:
    return escape(text, quote=True)
