"""The dashboard page: served live by the daemon, or exported as one self-contained static file.

Charts are drawn by plotly.js, taken from the ``plotly`` PyPI package (it ships ``plotly.min.js``), so nothing is
fetched from a CDN and no drawing code is hand-written. Live, the page loads the script from the daemon and polls
``/api/dashboard`` every 2 s; exported, the script and a data snapshot are inlined.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["plotly_js", "render_dashboard"]

_PLOTLY: bytes | None = None


def plotly_js() -> bytes:
    """plotly.min.js as shipped inside the plotly package (no CDN); read once, then kept."""
    global _PLOTLY
    if _PLOTLY is None:
        _PLOTLY = resources.files("plotly").joinpath("package_data").joinpath("plotly.min.js").read_bytes()
    return _PLOTLY


def _template() -> str:
    return resources.files(__package__).joinpath("static").joinpath("optimization-dashboard.html").read_text("utf-8")


def render_dashboard(snapshot: dict[str, Any] | None, *, inline_js: bool) -> str:
    """The page; ``snapshot`` (data) and ``inline_js`` make it work without a server."""
    page = _template()
    if inline_js:
        script = "<script>" + plotly_js().decode("utf-8").replace("</script", "<\\/script") + "</script>"
    else:
        script = '<script src="/static/plotly.min.js"></script>'
    page = page.replace("<!--PLOTLY-->", script, 1)
    if snapshot is not None:
        data = json.dumps(snapshot).replace("</", "<\\/")
        page = page.replace("/*SNAPSHOT*/null", data, 1)
    return page
