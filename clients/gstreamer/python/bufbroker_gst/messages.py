"""The bus messages both elements post: errors that say what to do, and their frame/copy counters."""

from __future__ import annotations

from typing import Any

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402


def post_error(element: Gst.Element, code: Any, text: str) -> None:
    """Post an ERROR message (``code``: a Gst.ResourceError/StreamError/CoreError member) with ``text``."""
    domains = {
        Gst.ResourceError: Gst.ResourceError.quark(),
        Gst.StreamError: Gst.StreamError.quark(),
        Gst.CoreError: Gst.CoreError.quark(),
    }
    error = GLib.Error.new_literal(domains[type(code)], text, int(code))
    element.post_message(Gst.Message.new_error(element, error, text))


def post_stats(element: Gst.Element, name: str, frames: int, copies: int) -> None:
    """Post an element message ``NAME, frames=N, copies=N`` (``gst-launch-1.0 -m`` prints it)."""
    structure = Gst.Structure.new_from_string(f"{name}, frames=(guint64){frames}, copies=(guint64){copies}")
    element.post_message(Gst.Message.new_element(element, structure))
