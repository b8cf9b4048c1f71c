"""Tests for pyllm.plot: dependency-free SVG loss curves."""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET

import pytest

from pyllm.plot import MAX_POINTS, loss_curve_svg, nice_ticks, write_loss_curve

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg"
    return root


def by_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if cls in (e.get("class") or "").split()]


def plot_area(root: ET.Element) -> tuple[float, float, float, float]:
    (rect,) = by_class(root, "plot-area")
    x, y = float(rect.get("x")), float(rect.get("y"))
    return x, y, x + float(rect.get("width")), y + float(rect.get("height"))


def coords(poly: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in poly.get("points").split()]


def test_standalone_svg_with_one_polyline_per_nonempty_series():
    series = {
        "train": [(0, 4.0), (10, 3.0), (20, 2.5)],
        "val": [(0, 4.2), (20, 2.9)],
        "empty": [],
        "all_nan": [(1, float("nan")), (2, float("inf"))],
    }
    svg = loss_curve_svg(series, title="run 1", width=500, height=300)
    assert svg.startswith("<?xml")
    root = parse(svg)
    assert root.get("width") == "500" and root.get("height") == "300"
    polys = root.findall(f".//{SVG}polyline")
    assert len(polys) == 2
    assert [p.get("data-name") for p in polys] == ["train", "val"]
    assert len({p.get("stroke") for p in polys}) == 2  # distinct colours
    assert len(coords(polys[0])) == 3 and len(coords(polys[1])) == 2
    legend_text = "".join(t.text or "" for t in by_class(root, "legend")[0].iter(SVG + "text"))
    for name in series:
        assert name in legend_text
    (title,) = by_class(root, "title")
    assert title.text == "run 1"
    assert by_class(root, "xlabel")[0].text == "step"
    assert by_class(root, "ylabel")[0].text == "loss"


def test_polyline_coordinates_inside_plot_area_and_monotone_mapping():
    series = {
        "a": [(i, 10.0 / (1 + i)) for i in range(0, 1001, 7)],
        "b": [(i, -3.0 + 0.001 * i) for i in range(50, 900, 13)],
    }
    root = parse(loss_curve_svg(series))
    x0, y0, x1, y1 = plot_area(root)
    for poly in root.iter(SVG + "polyline"):
        pts = coords(poly)
        for x, y in pts:
            assert x0 - 1e-6 <= x <= x1 + 1e-6
            assert y0 - 1e-6 <= y <= y1 + 1e-6
    # Larger data x -> larger screen x; larger loss -> smaller screen y.
    a = coords(root.findall(f".//{SVG}polyline")[0])
    assert all(p[0] < q[0] for p, q in zip(a, a[1:]))
    assert all(p[1] <= q[1] for p, q in zip(a, a[1:])) and a[0][1] < a[-1][1]


@pytest.mark.parametrize(
    "lo, hi, want",
    [
        (0, 1000, [0, 200, 400, 600, 800, 1000]),
        (0.5, 3.2, [0, 1, 2, 3, 4]),
        (1.7, 2.45, [1.6, 1.8, 2.0, 2.2, 2.4, 2.6]),
        (-0.03, 0.07, [-0.05, 0.0, 0.05, 0.1]),
        (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (120, 980, [0, 200, 400, 600, 800, 1000]),
        (3, 47, [0, 10, 20, 30, 40, 50]),
    ],
)
def test_nice_ticks_are_1_2_5_steps(lo, hi, want):
    got = nice_ticks(lo, hi)
    assert got == pytest.approx(want, abs=1e-12)


def test_nice_ticks_spacing_is_1_2_5_times_power_of_ten():
    for lo, hi in [(0, 7), (1e-4, 9e-4), (123.0, 123456.0), (-5e6, 2e6), (0.99, 1.01)]:
        t = nice_ticks(lo, hi)
        assert 3 <= len(t) <= 7
        assert t[0] <= lo and t[-1] >= hi
        step = t[1] - t[0]
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6


def test_tick_labels_in_svg():
    root = parse(loss_curve_svg({"s": [(0, 0.5), (1000, 3.2)]}))
    xt = [t.text for t in by_class(root, "xtick")]
    yt = [t.text for t in by_class(root, "ytick")]
    assert xt == ["0", "200", "400", "600", "800", "1000"]
    assert yt == ["0", "1", "2", "3", "4"]
    # Tick labels sit at the mapped positions: first/last x tick at the area edges.
    x0, _, x1, _ = plot_area(root)
    xs = [float(t.get("x")) for t in by_class(root, "xtick")]
    assert xs[0] == pytest.approx(x0) and xs[-1] == pytest.approx(x1)


def test_decimal_tick_labels():
    root = parse(loss_curve_svg({"s": [(0, 1.7), (5, 2.45)]}))
    assert [t.text for t in by_class(root, "ytick")] == ["1.6", "1.8", "2.0", "2.2", "2.4", "2.6"]


def test_nan_and_inf_points_are_skipped():
    series = {"s": [(0, 3.0), (1, float("nan")), (2, 2.0), (float("nan"), 1.0), (3, float("-inf")), (4, 1.5)]}
    root = parse(loss_curve_svg(series))
    (poly,) = root.iter(SVG + "polyline")
    pts = coords(poly)
    assert len(pts) == 3
    assert all(math.isfinite(v) for p in pts for v in p)
    # The same as plotting only the finite points.
    clean = parse(loss_curve_svg({"s": [(0, 3.0), (2, 2.0), (4, 1.5)]}))
    assert coords(next(clean.iter(SVG + "polyline"))) == pts


def test_title_and_names_are_escaped():
    title = 'a < b && c > "d"'
    svg = loss_curve_svg({"x<y>&z": [(0, 1), (1, 2)]}, title=title, xlabel="t<1>", ylabel="l&l")
    assert "a &lt; b &amp;&amp; c &gt;" in svg
    root = parse(svg)
    assert by_class(root, "title")[0].text == title
    assert by_class(root, "xlabel")[0].text == "t<1>"
    assert by_class(root, "ylabel")[0].text == "l&l"
    assert root.find(f".//{SVG}polyline").get("data-name") == "x<y>&z"


def test_control_characters_do_not_break_xml():
    parse(loss_curve_svg({"a\x00b\x1b": [(0, 1), (1, 2)]}, title="bell\x07"))


def test_empty_input_draws_axes_with_no_data_note():
    for series in ({}, {"a": []}, {"a": [(0, float("nan"))]}):
        root = parse(loss_curve_svg(series))
        assert root.findall(f".//{SVG}polyline") == []
        notes = by_class(root, "no-data")
        assert len(notes) == 1 and notes[0].text == "no data"
        assert by_class(root, "xtick") and by_class(root, "ytick")
        plot_area(root)


def test_single_point_and_constant_series():
    root = parse(loss_curve_svg({"one": [(5, 2.5)], "flat": [(0, 1.0), (100, 1.0)]}))
    x0, y0, x1, y1 = plot_area(root)
    polys = root.findall(f".//{SVG}polyline")
    assert len(polys) == 2
    for poly in polys:
        for x, y in coords(poly):
            assert x0 <= x <= x1 and y0 <= y <= y1
    yt = [float(t.text) for t in by_class(root, "ytick")]
    assert len(set(yt)) >= 2  # a real, non-degenerate axis
    # Constant-only data still yields a finite, non-degenerate range.
    root = parse(loss_curve_svg({"flat": [(3, 7.0), (3, 7.0)]}))
    (poly,) = root.iter(SVG + "polyline")
    assert all(math.isfinite(v) for p in coords(poly) for v in p)
    assert len({t.text for t in by_class(root, "ytick")}) >= 2


def test_large_series_downsampled_keeping_first_and_last():
    n = 100_000
    pts = [(i, 1.0 + (i % 17) / 100.0) for i in range(n)]
    svg1 = loss_curve_svg({"s": pts})
    svg2 = loss_curve_svg({"s": pts})
    assert svg1 == svg2  # deterministic
    root = parse(svg1)
    (poly,) = root.iter(SVG + "polyline")
    got = coords(poly)
    assert 2 <= len(got) <= MAX_POINTS
    x0, _, x1, _ = plot_area(root)
    assert got[0][0] == pytest.approx(x0, abs=0.006)  # step 0 kept
    assert got[-1][0] == pytest.approx(x0 + (x1 - x0) * (n - 1) / 100_000, abs=0.006)  # last kept


def test_bad_input_rejected():
    with pytest.raises((TypeError, ValueError)):
        loss_curve_svg({"s": [(0, "x")]})
    with pytest.raises(ValueError):
        loss_curve_svg({"s": [(0, 1)]}, width=10, height=10)


def test_write_loss_curve_atomic(tmp_path):
    p = tmp_path / "loss.svg"
    write_loss_curve(p, {"s": [(0, 2.0), (1, 1.0)]}, title="T")
    first = p.read_text(encoding="utf-8")
    parse(first)
    assert first == loss_curve_svg({"s": [(0, 2.0), (1, 1.0)]}, title="T")
    write_loss_curve(p, {"s": [(0, 2.0), (1, 0.5)]})
    assert p.read_text(encoding="utf-8") != first
    assert os.listdir(tmp_path) == ["loss.svg"]  # no temp leftovers
    with pytest.raises(IsADirectoryError):
        write_loss_curve(tmp_path, {"s": []})
    with pytest.raises(ValueError):
        write_loss_curve(tmp_path / "x.svg", {"s": [(0, 1)]}, width=1)
    assert os.listdir(tmp_path) == ["loss.svg"]
