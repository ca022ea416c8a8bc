"""The test pattern: a moving picture with the frame number drawn in as a barcode.

The number is written into the luma plane as two rows of BITS blocks, the
second row the complement of the first, so a consumer can read it back
without OCR and tell a torn or stale frame (the rows disagree) from a
wrong one. Blocks scale with the picture, so the code survives a
resolution change and lossy H.264.
"""

from __future__ import annotations

import numpy

BITS = 16
BRIGHT, DARK = 235, 16  # video-range luma: far apart after lossy coding
BAR_ROWS = 2


def _cells(width: int, height: int) -> tuple[int, int]:
    """Width and height of one barcode block."""
    return width // BITS, max(height // 12, 8)


def draw_luma(number: int, width: int, height: int) -> numpy.ndarray:
    """The luma plane of frame ``number``: a drifting gradient, a moving box, the barcode."""
    ys, xs = numpy.ogrid[0:height, 0:width]
    luma = ((xs * 160 // width + ys * 64 // height + number * 3) % 160 + 40).astype(numpy.uint8)
    box = max(height // 6, 8)
    x0 = (number * 7) % max(width - box, 1)
    y0 = height // 3 + (number * 3) % max(height // 2 - box, 1)
    luma[y0 : y0 + box, x0 : x0 + box] = 220
    cell_w, cell_h = _cells(width, height)
    for bit in range(BITS):
        on = (number >> (BITS - 1 - bit)) & 1
        x = bit * cell_w
        luma[0:cell_h, x : x + cell_w] = BRIGHT if on else DARK
        luma[cell_h : 2 * cell_h, x : x + cell_w] = DARK if on else BRIGHT
    return luma


def draw_chroma(number: int, width: int, height: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """The U and V planes (half size): slowly cycling colour washes."""
    ys, xs = numpy.ogrid[0 : height // 2, 0 : width // 2]
    u = ((xs * 96 // max(width // 2, 1) + number) % 96 + 80).astype(numpy.uint8)
    v = ((ys * 96 // max(height // 2, 1) + 2 * number) % 96 + 80).astype(numpy.uint8)
    return numpy.broadcast_to(u, (height // 2, width // 2)).copy(), numpy.broadcast_to(
        v, (height // 2, width // 2)
    ).copy()


def read_number(luma: numpy.ndarray, width: int, height: int) -> int:
    """The frame number in a luma plane (rows x at least ``width`` bytes), or -1 if unreadable.

    Each block is judged by the mean of its central half, so ringing at
    block edges after lossy coding does not flip a bit.
    """
    cell_w, cell_h = _cells(width, height)
    top, bottom = cell_h // 4, cell_h - cell_h // 4
    left, right = cell_w // 4, cell_w - cell_w // 4
    number = 0
    for bit in range(BITS):
        x = bit * cell_w
        first = luma[top:bottom, x + left : x + right].mean() > (BRIGHT + DARK) / 2
        second = luma[cell_h + top : cell_h + bottom, x + left : x + right].mean() > (BRIGHT + DARK) / 2
        if first == second:
            return -1
        number = number << 1 | int(first)
    return number


def mean_luma(luma: numpy.ndarray, width: int) -> float:
    """Mean of the picture's luma, leaving out the stride padding beyond ``width``."""
    return float(luma[:, :width].mean())
