"""bo_queue.api.svg: well-formed SVG, escaped text, sane axes, and 0 or 1 points."""

from __future__ import annotations

import itertools
import math
import re
import xml.etree.ElementTree as ET

import pytest

from bo_queue.api.svg import Series, line_chart, log_ticks, nice_ticks, scatter

NS = {"s": "http://www.w3.org/2000/svg"}
EVIL = '<script>alert("x")</script> & \'q\''


def parse(markup: str) -> ET.Element:
    root = ET.fromstring(markup)  # well-formed XML, or this raises
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def path_points(d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", d)]


def texts(root: ET.Element, classes: str) -> list[str]:
    """The text of every <text> that has all of `classes` ("tick x": the x axis ticks)."""
    wanted = set(classes.split())
    return [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")
            if wanted <= set((t.get("class") or "").split())]


def plot_area(root: ET.Element) -> tuple[float, float, float, float]:
    rect = root.find("s:rect[@class='plot-area']", NS)
    assert rect is not None
    x, y = float(rect.get("x", 0)), float(rect.get("y", 0))
    return x, y, x + float(rect.get("width", 0)), y + float(rect.get("height", 0))


# -- ticks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("low", "high"), [(0, 1), (-3.2, 17), (1e-4, 7e-4), (1, 8), (-5, -1),
                                           (0.3, 0.30001), (1e6, 3e6)])
def test_nice_ticks_are_round_and_cover_the_range(low: float, high: float) -> None:
    ticks = nice_ticks(low, high)
    assert 2 <= len(ticks) <= 11
    assert all(low - 1e-12 <= t <= high + 1e-12 for t in ticks)
    steps = {round(b - a, 12) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1  # evenly spaced
    step = steps.pop()
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in (1, 2, 2.5, 5)


def test_nice_ticks_edge_cases() -> None:
    assert nice_ticks(2, 2) == [2]
    assert nice_ticks(1, 0) == nice_ticks(0, 1)
    assert nice_ticks(0, math.inf) == []
    assert log_ticks(1e-4, 0.2) == [1e-4, 1e-3, 1e-2, 1e-1]
    assert log_ticks(2, 5) == [2, 5]  # no power of ten inside: the ends


# -- line_chart -------------------------------------------------------------------------------


def test_line_chart_draws_one_point_per_command_inside_the_plot() -> None:
    values = [(0, 5.0), (1, 3.0), (2, 3.0), (3, 0.5), (4, -1.0)]
    root = parse(line_chart([Series("best", values)], title="t", x_label="trial",
                            y_label="loss", element_id="conv", integer_x=True))
    assert root.get("id") == "conv"
    (path,) = root.findall("s:path[@class='series']", NS)
    assert path.get("data-points") == "5" and path.get("data-series") == "best"
    points = path_points(path.get("d", ""))
    assert len(points) == 5 and path.get("d", "").count("M") == 1
    left, top, right, bottom = plot_area(root)
    assert all(left <= x <= right and top <= y <= bottom for x, y in points)
    xs = [x for x, _ in points]
    assert xs == sorted(xs) and len(set(xs)) == 5  # x grows to the right
    ys = [y for _, y in points]
    assert ys[0] < ys[3] < ys[4]  # smaller values lower down (larger pixel y)
    assert ys[1] == ys[2]
    assert len(root.findall("s:circle", NS)) == 5
    assert texts(root, "title") == ["t"]
    assert texts(root, "label") == ["trial", "loss"]
    x_ticks = texts(root, "tick x")
    assert len(x_ticks) >= 3 and all(t.lstrip("-").isdigit() for t in x_ticks)  # integers
    assert len(texts(root, "tick y")) >= 3


def test_line_chart_with_no_points() -> None:
    root = parse(line_chart([Series("best", [])], title="empty"))
    assert texts(root, "empty") == ["no data yet"]
    for path in root.findall("s:path", NS):
        assert path_points(path.get("d", "")) == []
    assert texts(root, "tick") == []
    root = parse(line_chart([]))
    assert texts(root, "empty") == ["no data yet"]


@pytest.mark.parametrize("point", [(0.0, 0.0), (3.0, -2.5), (7.0, 1e-9)])
def test_line_chart_with_one_point(point: tuple[float, float]) -> None:
    root = parse(line_chart([Series("best", [point])], integer_x=True))
    (path,) = root.findall("s:path", NS)
    ((x, y),) = path_points(path.get("d", ""))
    left, top, right, bottom = plot_area(root)
    assert left < x < right and top < y < bottom  # somewhere inside, not on an edge
    assert math.isfinite(x) and math.isfinite(y)
    assert texts(root, "tick")  # the axes still have ticks


def test_line_chart_drops_non_finite_points() -> None:
    series = Series("s", [(0, 1.0), (1, math.nan), (2, math.inf), (3, 2.0)])
    root = parse(line_chart([series]))
    (path,) = root.findall("s:path", NS)
    assert path.get("data-points") == "2"
    assert len(path_points(path.get("d", ""))) == 2


def test_line_chart_several_series_get_a_legend_and_colors() -> None:
    root = parse(line_chart([
        Series("observed", [(0, 3), (1, 1), (2, 2)], line=False),
        Series("best so far", [(0, 3), (1, 1), (2, 1)]),
        Series("other", [(0, 0), (2, 4)], color="#123456"),
    ]))
    paths = root.findall("s:path", NS)
    assert [p.get("data-series") for p in paths] == ["best so far", "other"]  # no line
    assert paths[1].get("stroke") == "#123456"
    assert len({p.get("stroke") for p in paths}) == 2
    legend = root.find("s:g[@class='legend']", NS)
    assert legend is not None
    assert [t.text for t in legend.findall("s:text", NS)] == ["observed", "best so far", "other"]


def test_line_chart_escapes_every_text() -> None:
    markup = line_chart([Series(EVIL, [(0, 1), (1, 2)]), Series("b", [(0, 2)])],
                        title=EVIL, x_label=EVIL, y_label=EVIL, element_id='x" onload="y')
    assert "<script>" not in markup and 'onload="y"' not in markup
    root = parse(markup)
    assert texts(root, "title") == [EVIL]  # escaped, so it reads back as the original
    assert root.get("aria-label") == EVIL
    assert root.get("id") == 'x" onload="y'
    assert root.find("s:path", NS).get("data-series") == EVIL  # type: ignore[union-attr]


# -- scatter ----------------------------------------------------------------------------------


def test_scatter_points_labels_and_highlight() -> None:
    points = [(0.1, 4.0), (0.5, 1.0), (0.9, 2.5)]
    root = parse(scatter(points, labels=["a", "b", EVIL], highlight=1, title="loss vs x",
                         x_label="x", y_label="loss", element_id="p"))
    circles = root.findall("s:circle", NS)
    assert len(circles) == 3
    assert [c.find("s:title", NS).text for c in circles] == ["a", "b", EVIL]  # type: ignore[union-attr]
    assert [c.get("class") for c in circles] == ["point", "point best", "point"]
    left, top, right, bottom = plot_area(root)
    xs = [float(c.get("cx", 0)) for c in circles]
    ys = [float(c.get("cy", 0)) for c in circles]
    assert all(left <= x <= right for x in xs) and all(top <= y <= bottom for y in ys)
    assert xs == sorted(xs)
    assert ys[1] > ys[2] > ys[0]


def test_scatter_with_zero_and_one_point() -> None:
    root = parse(scatter([], title="nothing"))
    assert root.findall("s:circle", NS) == []
    assert texts(root, "empty") == ["no data yet"]
    root = parse(scatter([(2.0, 2.0)]))
    (circle,) = root.findall("s:circle", NS)
    left, top, right, bottom = plot_area(root)
    assert left < float(circle.get("cx", 0)) < right
    assert top < float(circle.get("cy", 0)) < bottom
    assert circle.find("s:title", NS).text == "(2, 2)"  # type: ignore[union-attr]


def test_scatter_log_x_uses_powers_of_ten_and_drops_non_positive() -> None:
    root = parse(scatter([(1e-4, 1.0), (1e-3, 2.0), (0.05, 3.0), (0.0, 9.0), (-1.0, 9.0)],
                         log_x=True))
    assert len(root.findall("s:circle", NS)) == 3
    assert texts(root, "tick x") == ["0.0001", "0.001", "0.01"]
    xs = [float(c.get("cx", 0)) for c in root.findall("s:circle", NS)]
    # equal ratios, equal distances
    assert xs[1] - xs[0] == pytest.approx(
        (xs[2] - xs[1]) / math.log10(50), rel=1e-3
    )


def test_scatter_log_y() -> None:
    root = parse(scatter([(0, 1e-3), (1, 1e-2), (2, 1e-1), (3, -1.0)], log_y=True))
    circles = root.findall("s:circle", NS)
    assert len(circles) == 3
    assert texts(root, "tick y") == ["0.001", "0.01", "0.1"]
    ys = [float(c.get("cy", 0)) for c in circles]
    assert ys[0] - ys[1] == pytest.approx(ys[1] - ys[2], rel=1e-3)  # even steps per decade


def test_scatter_categorical_ticks() -> None:
    ticks = [(0.0, "gbtree"), (1.0, "dart"), (2.0, "<lin>")]
    root = parse(scatter([(0, 1.0), (2, 0.5)], x_ticks=ticks))
    assert texts(root, "tick x") == ["gbtree", "dart", "<lin>"]
    root = parse(scatter([(0, 1.0), (5, 0.0)], y_ticks=[(0.0, "no"), (1.0, "yes")]))
    assert texts(root, "tick y") == ["no", "yes"]
