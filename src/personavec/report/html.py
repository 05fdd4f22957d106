"""The pieces every report page is made of: readable values, tables, inline PNG images, the page."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from personavec._internal.files import atomic_path

STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{border:1px solid #ccc;"
    "padding:.3em;text-align:left;vertical-align:top}table{border-collapse:collapse}"
    ".proxy{background:#fff3cd;padding:.5em}.met{color:#1a7f37}.missed{color:#b42318}"
    ".num{white-space:nowrap}"
)


def readable(value: Any) -> str:
    """`value` as a person reads it: numbers to 3 significant digits, lists joined, no JSON quoting."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return ", ".join(readable(v) for v in value) or "none"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {readable(v)}" for k, v in value.items()) or "none"
    return str(value)


def grid(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table: `header` cells, then one row per entry of `rows`, each value made `readable`."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(readable(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def agg() -> None:
    """Plot without a display."""
    import matplotlib

    matplotlib.use("Agg")


def png(figure: Any) -> str:
    """A matplotlib figure as a base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def save_png(figure: Any, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Write a matplotlib figure to the PNG file `path`, atomically (the figure is closed)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return Path(path)


def image(title: str, data: str) -> str:
    """A heading and the base64 PNG `data` under it."""
    alt = html.escape(title)
    return f"<h2>{alt}</h2><img alt='{alt}' src='data:image/png;base64,{data}'>"


def page(title: str, parts: Sequence[str], proxy: str | None = None) -> str:
    """A self-contained HTML page; `proxy` (a judge's proxy note) is shown in a box at the top."""
    warning = f"<p class='proxy'><b>Judge:</b> {html.escape(proxy)}</p>" if proxy else ""
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>"
    body = f"<h1>{html.escape(title)}</h1>{warning}" + "\n".join(parts)
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>\n"


def write_page(path: str | Path, title: str, parts: Sequence[str], proxy: str | None = None) -> Path:
    """Write `page(...)` to `path` atomically; return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(page(title, parts, proxy))
    return path
