"""Template filters: how numbers, sizes, times and rates read on a page."""

from __future__ import annotations

import datetime

from flask import Flask
from markupsafe import Markup, escape


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


def about(seconds: float | None) -> str:
    """An estimate as a person reads it: "less than a minute", "about 2 min", "about 1 h
    20 min". Never finer than a minute, and never lower for more seconds."""
    if seconds is None:
        return "–"
    if seconds < 45:
        return "less than a minute"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {max(1, minutes)} min"
    if minutes < 600:
        hours, rest = divmod(round(minutes / 10) * 10, 60)
        return f"about {hours} h {rest} min" if rest else f"about {hours} h"
    return f"about {round(minutes / 60)} h"


def local_time(timestamp: float | None, style: str = "clock") -> Markup:
    """A `<time>` with the moment in UTC, readable without JavaScript ("16:46:00 UTC");
    static/headway.js shows it in the reader's time zone: `clock` as a local time, `ago`
    as a relative one ("3 min ago", kept fresh), `date` as a local date and time."""
    if not timestamp:
        return Markup("")
    iso = datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    day, hms = iso[:10], iso[11:19]  # one strftime: a log of hundreds of lines calls this
    text = f"{day} {hms[:5]} UTC" if style == "date" else f"{hms} UTC"
    title = f"{day} {hms} UTC"
    return Markup(
        f'<time datetime="{iso}" data-local="{escape(style)}" title="{title}">{text}</time>'
    )


def register_filters(app: Flask) -> None:
    app.jinja_env.filters.update(
        duration=duration,
        filesize=filesize,
        rate=rate,
        clock=clock,
        about=about,
        local_time=local_time,
    )
