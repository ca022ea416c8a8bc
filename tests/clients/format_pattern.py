"""A numbered pattern written and checked plane by plane through a frame's format (bufbroker.formats).

Every sample of plane p, row r, column c, component k of frame seq holds
(seq + 61 p + 3 r + 5 c + 17 k) mod 256 (mod 1024 for 16-bit samples): the
numbers differ by plane, row, column and component, so a reader that takes
the bytes as another format, another stride or another plane offset sees
other numbers. The writer and the reader each go through their own
``planes()`` views of the frame's layout.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def expected(view: Any, plane: int, seq: int) -> Any:
    """The pattern plane ``plane`` of frame ``seq`` holds, in ``view``'s shape and dtype."""
    rows, cols = view.shape[0], view.shape[1]
    value = seq + 61 * plane + 3 * np.arange(rows)[:, None] + 5 * np.arange(cols)[None, :]
    if view.ndim == 3:
        value = value[:, :, None] + 17 * np.arange(view.shape[2])[None, None, :]
    modulo = 1024 if view.dtype.itemsize == 2 else 256
    return (value % modulo).astype(view.dtype)


def fill(planes: list[Any], seq: int) -> None:
    for index, view in enumerate(planes):
        view[...] = expected(view, index, seq)


def check(planes: list[Any], seq: int) -> str:
    """ "" when every plane holds frame ``seq``'s pattern, else the first plane that does not."""
    for index, view in enumerate(planes):
        if not np.array_equal(view, expected(view, index, seq)):
            return f"frame {seq}: plane {index} {view.shape} does not hold its pattern"
    return ""
