"""GObject property specs both elements have: the socket dir and the read-only frame and copy counters."""

from __future__ import annotations

from typing import Any

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, GObject  # noqa: E402

SOCKET_DIR: tuple[Any, ...] = (
    str,
    "socket dir",
    "The broker's socket dir (empty: $BUFBROKER_SOCKET_DIR, else $XDG_RUNTIME_DIR/bufbroker, else /run/bufbroker)",
    "",
    GObject.ParamFlags.READWRITE,
)


def counter(nick: str, blurb: str) -> tuple[Any, ...]:
    """A read-only uint64 property (``frames``, ``copies``) counting from 0."""
    return (GObject.TYPE_UINT64, nick, blurb, 0, GLib.MAXUINT64, 0, GObject.ParamFlags.READABLE)
