"""Loss curves as standalone SVG documents, with no plotting dependency.

:func:`loss_curve_svg` turns one or more named series of ``(x, y)`` points
(typically ``(step, loss)``) into an SVG string: framed axes with about
five "nice" tick values per axis (steps of 1, 2 or 5 times a power of
ten), light gridlines, one ``<polyline>`` per series in distinct colours,
a legend, a title and axis labels.  :func:`write_loss_curve` writes such a
document to a file atomically.  :func:`nice_ticks` exposes the tick
algorithm.

Robustness: non-finite points (NaN, +/-Inf) are skipped; a series with no
finite point draws no line (its legend entry says "no data"); with no data
at all the axes are drawn with a "no data" note; a single point or a
constant series gets a sensible non-degenerate axis range (single points
also get a dot marker); long series are downsampled deterministically to at
most :data:`MAX_POINTS` points, always keeping the first and the last.  All
text is XML-escaped and stripped of characters XML cannot carry.

The elements carry ``class`` attributes for programmatic inspection:
``plot-area`` (the ``<rect>`` framing the data region), ``series``
(polylines, with ``data-name``), ``xtick`` / ``ytick`` (tick labels),
``grid``, ``legend``, ``title``, ``xlabel``, ``ylabel``, ``no-data``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from xml.sax.saxutils import escape

from .tensorfile import atomic_write_text

__all__ = ["MAX_POINTS", "loss_curve_svg", "nice_ticks", "write_loss_curve"]

#: Most points drawn per series; longer series are downsampled.
MAX_POINTS: int = 2000

# Colour-blind-friendly qualitative palette (Tableau 10); further series get
# hues spaced by the golden angle.
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)

# Characters not allowed in XML 1.0 documents (C0 controls except tab/LF/CR,
# surrogates, U+FFFE/U+FFFF).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

_FONT = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\""


def _colour(i: int) -> str:
    if i < len(_PALETTE):
        return _PALETTE[i]
    hue = (i * 137.508) % 360.0
    return f"hsl({hue:.1f},65%,45%)"


def _text(s: object) -> str:
    """Escape text content for XML, dropping characters XML cannot hold."""
    return escape(_XML_INVALID.sub("", str(s)))


def _attr(s: object) -> str:
    """Escape a double-quoted attribute value."""
    return escape(_XML_INVALID.sub("", str(s)), {'"': "&quot;", "\n": "&#10;", "\t": "&#9;", "\r": "&#13;"})


def _step_candidates(raw: float) -> Iterable[float]:
    """Yield 1-2-5 steps in increasing order, starting at or below ``raw``."""
    exp = math.floor(math.log10(raw)) - 1
    while True:
        for m in (1.0, 2.0, 5.0):
            yield m * 10.0**exp
        exp += 1


def _nice_axis(lo: float, hi: float, target: int = 5) -> tuple[float, float, float, list[float]]:
    """Return (axis_lo, axis_hi, step, ticks) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if lo > hi:
        lo, hi = hi, lo
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1e-300):
        # Degenerate range (a single value): widen symmetrically.
        pad = abs(lo) * 0.1 if lo != 0 else 1.0
        lo, hi = lo - pad, hi + pad
    target = max(int(target), 1)
    raw = hi / target - lo / target  # no overflow even for huge finite values
    for step in _step_candidates(raw):
        k0 = math.floor(lo / step + 1e-9)
        k1 = math.ceil(hi / step - 1e-9)
        if k1 - k0 + 1 <= target + 1:
            break
    ticks = [k * step for k in range(k0, k1 + 1)]
    return k0 * step, k1 * step, step, ticks


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Tick values for an axis spanning ``[lo, hi]``.

    The step is the smallest ``1, 2 or 5 x 10**k`` giving at most
    ``target + 1`` ticks; the ticks are the multiples of the step from the
    largest one ``<= lo`` to the smallest one ``>= hi``, so they enclose
    the data (and are the axis bounds used by :func:`loss_curve_svg`).  A
    degenerate range (``lo == hi``) is widened around the value first.
    Example: ``nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]``.
    """
    return _nice_axis(float(lo), float(hi), target)[3]


def _fmt_tick(v: float, step: float) -> str:
    """Format a tick value with just enough decimals for the step."""
    if abs(v) < step * 1e-6:
        v = 0.0
    big = max(abs(v), step)
    if big >= 1e7 or step < 1e-5:
        if v == 0:
            return "0"
        digits = max(1, math.floor(math.log10(big)) - math.floor(math.log10(step) + 1e-9) + 1)
        return f"{v:.{digits}g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{v:.{decimals}f}"


def _clean(points: Iterable) -> list[tuple[float, float]]:
    """Finite (x, y) float pairs, in the given order."""
    out = []
    for p in points:
        x, y = p
        x, y = float(x), float(y)
        if math.isfinite(x) and math.isfinite(y):
            out.append((x, y))
    return out


def _downsample(pts: list[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """Evenly spaced subset of at most ``limit`` points keeping both ends."""
    n = len(pts)
    if n <= limit:
        return pts
    return [pts[(i * (n - 1)) // (limit - 1)] for i in range(limit)]


def loss_curve_svg(
    series: Mapping[str, Iterable[tuple[float, float]]],
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "loss",
    width: int = 640,
    height: int = 400,
) -> str:
    """Render named ``(x, y)`` series as a standalone SVG line chart.

    ``series`` maps a legend name to a sequence of ``(x, y)`` pairs (e.g.
    ``{"train": [(0, 4.2), (100, 3.1)], "val": [...]}``); points are
    joined in the given order.  Returns the complete SVG document as a
    string (``<?xml ...?>`` declaration, ``<svg>`` root in the SVG
    namespace, ``width`` x ``height`` user units).

    Non-finite points are skipped; series without finite points draw no
    polyline; an empty ``series`` draws empty axes with a "no data" note;
    each series is downsampled to at most :data:`MAX_POINTS` points
    (deterministic, first and last kept).  Raises :class:`ValueError` for a
    size smaller than 160 x 120 and :class:`TypeError` / :class:`ValueError`
    for points that are not pairs of numbers.
    """
    width, height = int(width), int(height)
    if width < 160 or height < 120:
        raise ValueError(f"plot size {width}x{height} is too small (minimum 160x120)")
    if not isinstance(series, Mapping):
        raise TypeError(f"series must be a dict of name -> [(x, y), ...], got {type(series).__name__}")

    cleaned: list[tuple[str, list[tuple[float, float]]]] = []
    for name, pts in series.items():
        try:
            cleaned.append((str(name), _downsample(_clean(pts))))
        except (TypeError, ValueError) as e:
            raise type(e)(f"series {name!r}: points must be (x, y) number pairs ({e})") from None
    all_pts = [p for _, pts in cleaned for p in pts]

    if all_pts:
        xs = [p[0] for p in all_pts]
        ys = [p[1] for p in all_pts]
        x_lo, x_hi, x_step, x_ticks = _nice_axis(min(xs), max(xs))
        y_lo, y_hi, y_step, y_ticks = _nice_axis(min(ys), max(ys))
    else:
        x_lo, x_hi, x_step, x_ticks = _nice_axis(0.0, 1.0)
        y_lo, y_hi, y_step, y_ticks = _nice_axis(0.0, 1.0)

    # Layout: margins leave room for the title, tick labels and axis labels.
    ylabels = [_fmt_tick(v, y_step) for v in y_ticks]
    left = 28 + 7 * max(len(s) for s in ylabels) + 10
    xlabels = [_fmt_tick(v, x_step) for v in x_ticks]
    right = width - max(16, 4 * len(xlabels[-1]) + 6)  # room for the last x label
    top = 40 if title else 20
    bottom = height - 48
    pw, ph = right - left, bottom - top

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def sy(y: float) -> float:
        return bottom - (y - y_lo) / (y_hi - y_lo) * ph

    out: list[str] = []
    add = out.append
    add('<?xml version="1.0" encoding="UTF-8"?>')
    add(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" {_FONT} font-size="12">'
    )
    add(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>')
    if title:
        add(f'<text class="title" x="{(left + right) / 2:.1f}" y="24" text-anchor="middle" '
            f'font-size="15" font-weight="bold">{_text(title)}</text>')

    # Gridlines and tick labels.
    add('<g class="grid" stroke="#e0e0e0" stroke-width="1">')
    for v in x_ticks:
        X = sx(v)
        add(f'<line x1="{X:.2f}" y1="{top}" x2="{X:.2f}" y2="{bottom}"/>')
    for v in y_ticks:
        Y = sy(v)
        add(f'<line x1="{left}" y1="{Y:.2f}" x2="{right}" y2="{Y:.2f}"/>')
    add("</g>")
    for v, s in zip(x_ticks, xlabels):
        add(f'<text class="xtick" x="{sx(v):.2f}" y="{bottom + 16}" text-anchor="middle" '
            f'fill="#333333">{_text(s)}</text>')
    for v, s in zip(y_ticks, ylabels):
        add(f'<text class="ytick" x="{left - 6}" y="{sy(v) + 4:.2f}" text-anchor="end" '
            f'fill="#333333">{_text(s)}</text>')
    add(f'<rect class="plot-area" x="{left}" y="{top}" width="{pw}" height="{ph}" '
        f'fill="none" stroke="#333333" stroke-width="1"/>')
    if xlabel:
        add(f'<text class="xlabel" x="{(left + right) / 2:.1f}" y="{height - 12}" '
            f'text-anchor="middle">{_text(xlabel)}</text>')
    if ylabel:
        cy = (top + bottom) / 2
        add(f'<text class="ylabel" x="16" y="{cy:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 16 {cy:.1f})">{_text(ylabel)}</text>')

    # Data.
    for i, (name, pts) in enumerate(cleaned):
        if not pts:
            continue
        colour = _colour(i)
        coords = " ".join(f"{sx(x):.2f},{sy(y):.2f}" for x, y in pts)
        add(f'<polyline class="series" data-name="{_attr(name)}" fill="none" stroke="{colour}" '
            f'stroke-width="1.5" stroke-linejoin="round" points="{coords}"/>')
        if len(pts) == 1:
            add(f'<circle class="marker" cx="{sx(pts[0][0]):.2f}" cy="{sy(pts[0][1]):.2f}" r="3" '
                f'fill="{colour}"/>')
    if not all_pts:
        add(f'<text class="no-data" x="{left + pw / 2:.1f}" y="{top + ph / 2:.1f}" '
            f'text-anchor="middle" fill="#888888" font-size="14">no data</text>')

    # Legend (top-right inside the plot area).
    if cleaned:
        labels = []
        for name, pts in cleaned:
            label = name if len(name) <= 40 else name[:39] + "\u2026"
            labels.append(label + ("" if pts else " (no data)"))
        lw = 34 + 7 * max(len(s) for s in labels)
        lh = 8 + 16 * len(labels)
        lx, ly = right - lw - 6, top + 6
        add('<g class="legend">')
        add(f'<rect x="{lx}" y="{ly}" width="{lw}" height="{lh}" fill="#ffffff" '
            f'fill-opacity="0.85" stroke="#bbbbbb"/>')
        for i, label in enumerate(labels):
            yy = ly + 14 + 16 * i
            if cleaned[i][1]:
                add(f'<line x1="{lx + 6}" y1="{yy - 4}" x2="{lx + 24}" y2="{yy - 4}" '
                    f'stroke="{_colour(i)}" stroke-width="2"/>')
            add(f'<text x="{lx + 30}" y="{yy}">{_text(label)}</text>')
        add("</g>")
    add("</svg>")
    return "\n".join(out) + "\n"


def write_loss_curve(
    path: str | os.PathLike,
    series: Mapping[str, Iterable[tuple[float, float]]],
    **kw,
) -> None:
    """Render :func:`loss_curve_svg` ``(series, **kw)`` and write it to ``path``.

    The write is atomic: a temp file in the same directory is written,
    flushed and fsync'ed, then moved onto ``path`` with :func:`os.replace`
    and the directory is fsync'ed (best effort), so readers never see a
    partial SVG.  Raises :class:`IsADirectoryError` if ``path`` is a
    directory; the temp file is removed on any error.
    """
    atomic_write_text(path, loss_curve_svg(series, **kw))
