"""The dashboard's two charts as inline SVG, drawn on the server: no script library to
ship or load, and every label goes through the template engine's escaping."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

WIDTH, HEIGHT, PAD = 720, 180, 24
COLOURS = {"SUCCESS": "#3a9b4e", "FAILURE": "#c8382e", "OTHER": "#8a94a6"}


def runs_per_hour(hours: list[dict[str, Any]]) -> SafeString:
    """Stacked bars: runs per hour by state, the last 24 hours."""
    peak = max((hour["total"] for hour in hours), default=0) or 1
    step = (WIDTH - 2 * PAD) / max(len(hours), 1)
    bars = []
    for index, hour in enumerate(hours):
        bottom = HEIGHT - PAD
        for state in ("SUCCESS", "FAILURE", "OTHER"):
            count = hour["states"].get(state, 0)
            height = (HEIGHT - 2 * PAD) * count / peak
            if count:
                bars.append((*numbers(PAD + index * step + 1, bottom - height, step - 2, height), COLOURS[state],
                             f"{local_hour(hour['hour'])}: {count} {state.lower()}"))  # fmt: skip
            bottom -= height
    labels = [(*numbers(PAD + i * step, HEIGHT - 6), local_hour(hours[i]["hour"])) for i in range(0, len(hours), 3)]
    return svg(
        format_html_join(
            "", '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>', bars
        ),  # fmt: skip
        format_html_join("", '<text x="{}" y="{}" font-size="10">{}</text>', labels),
        format_html('<text x="{}" y="12" font-size="10">peak {} runs/hour</text>', PAD, peak),
        "runs per hour by state",
    )


def median_per_task(medians: list[tuple[str, float]]) -> SafeString:
    """Horizontal bars: median duration per task over the last 24 hours."""
    if not medians:
        return format_html("<p>{}</p>", "No finished runs in the last 24 hours.")
    longest = max(value for _, value in medians) or 1
    row = 18
    height = row * len(medians) + PAD
    bars = [(*numbers(260, i * row + 4, max(1.0, (WIDTH - 340) * value / longest), row - 6), name, i * row + 16,
             WIDTH - 70, f"{value:.2f} s") for i, (name, value) in enumerate(medians)]  # fmt: skip
    body = format_html_join(
        "",
        '<rect x="{0}" y="{1}" width="{2}" height="{3}" fill="#447e9b"></rect>'
        '<text x="4" y="{5}" font-size="11">{4}</text><text x="{6}" y="{5}" font-size="11">{7}</text>',
        bars,
    )
    return svg(body, "", "", "median duration per task", height=height)


def svg(bars: Any, labels: Any, legend: Any, title: str, height: int = HEIGHT) -> SafeString:
    return format_html(
        '<svg class="bk-chart" viewBox="0 0 {} {}" role="img" aria-label="{}">{}{}{}</svg>',
        WIDTH, height, title, bars, labels, legend,
    )  # fmt: skip


def local_hour(moment: dt.datetime) -> str:
    return timezone.localtime(moment).strftime("%H:00")


def numbers(*values: float) -> tuple[str, ...]:
    """SVG coordinates as text (format_html escapes its arguments into strings first)."""
    return tuple(f"{value:.1f}" for value in values)
