"""The dashboard's colours meet WCAG AA: 4.5:1 for text, 3:1 for the chart's lines and
marks (WCAG 1.4.3 and 1.4.11), read from the stylesheet and the chart module themselves."""

from __future__ import annotations

import re

import pytest

from mailqueue import web

WHITE = "#ffffff"
PAGE = "#f3f4f6"


def luminance(colour: str) -> float:
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def variables() -> dict[str, str]:
    return dict(re.findall(r"--([a-z]+):\s*(#[0-9a-f]{6})", web.read_asset("dashboard.css")))


@pytest.mark.parametrize("name", ["ink", "muted", "accent", "danger", "ok", "warn"])
def test_text_colours_on_the_panels_and_the_page(name: str) -> None:
    colour = variables()[name]
    assert contrast(colour, WHITE) >= 4.5 and contrast(colour, PAGE) >= 4.5, name


def test_button_text_on_its_fill() -> None:
    found = variables()
    assert contrast(WHITE, found["accent"]) >= 4.5
    assert contrast(WHITE, found["danger"]) >= 4.5
    assert contrast(found["ink"], "#f6f8fa") >= 4.5  # a plain button
    assert contrast("#d0d7de", "#1f2328") >= 4.5  # the header's quiet text


def test_chart_colours_against_white() -> None:
    script = web.read_asset("chart.js")
    stores = re.findall(r"#[0-9a-f]{6}", script.split("STORE_COLOURS = [", 1)[1].split("]")[0])
    assert len(stores) >= 6
    others = re.findall(r'(?:DELIVERED|INK) = "(#[0-9a-f]{6})"', script)
    for colour in stores + others:
        assert contrast(colour, WHITE) >= 3, colour


def test_access_band_outline_against_white_and_each_fill() -> None:
    """The band keeps queue.png's fills, two of them light: every segment is outlined in a
    colour that stands out from white and from each fill."""
    script = web.read_asset("chart.js")
    fills = re.findall(r'\["[a-z-]+", "(#[0-9a-f]{6})", "[a-z]*", "[^"]+"\]', script)
    assert len(fills) == 4
    outline = re.findall(r'ACCESS_OUTLINE = "(#[0-9a-f]{6})"', script)[0]
    assert contrast(outline, WHITE) >= 3
    for colour in fills:
        assert contrast(outline, colour) >= 3, colour


def test_arrival_chart_colours_against_white() -> None:
    script = web.read_asset("chart.js")
    for colour in re.findall(r'(?:REPLAYED|PROFILE) = "(#[0-9a-f]{6})"', script):
        assert contrast(colour, WHITE) >= 3, colour
