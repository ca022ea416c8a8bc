"""The dashboard: one page of plain JS and SVG, served by the broker itself.

No build step and nothing fetched from the internet: the page, its script,
its style sheet and its icon are these files, read once when the HTTP app starts.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (file, media type)
ASSETS = {
    "index.html": (HERE / "index.html", "text/html; charset=utf-8"),
    "app.js": (HERE / "app.js", "text/javascript; charset=utf-8"),
    "style.css": (HERE / "style.css", "text/css; charset=utf-8"),
    "favicon.svg": (HERE / "favicon.svg", "image/svg+xml"),
}
