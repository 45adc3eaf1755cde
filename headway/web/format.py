"""Template filters: how numbers, sizes, times and rates read on a page."""

from __future__ import annotations

import datetime

from flask import Flask


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(max(0, round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def filesize(size: float) -> str:
    """Decimal units, as file managers show them; GB is the largest."""
    if abs(size) < 1000:
        return f"{size:.0f} B"
    for unit in ("KB", "MB", "GB"):
        size /= 1000
        if abs(size) < 1000 or unit == "GB":
            break
    return f"{size:.1f} {unit}"


def rate(value: float, unit: str) -> str:
    if unit == "bytes":
        return f"{filesize(value)}/s"
    return f"{value:.1f} {unit}/s"


def clock(timestamp: float | None) -> str:
    if not timestamp:
        return ""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%H:%M:%S UTC")


def register_filters(app: Flask) -> None:
    app.jinja_env.filters.update(duration=duration, filesize=filesize, rate=rate, clock=clock)
