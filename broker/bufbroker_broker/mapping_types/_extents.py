"""Extent lists shared by the segments and udmabuf types."""

from __future__ import annotations

from collections.abc import Sequence

from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core.errors import InvalidArgument

MAX_EXTENTS = 4096


def normalise_extents(extents: Sequence[pb.Extent], fd_sizes: Sequence[int], size: int, what: str) -> list[pb.Extent]:
    """Validate an offer's extents; the default (none given) is each fd whole.

    In the default, fd 0 contributes the buffer's ``size`` bytes and every
    other fd all of itself. Raises InvalidArgument naming the extent, ``what``
    offer it belongs to and the fix.
    """
    if len(extents) > MAX_EXTENTS:
        raise InvalidArgument(f"{what} offer has {len(extents)} extents; at most {MAX_EXTENTS} are allowed")
    if not extents:
        return [
            pb.Extent(fd_index=index, offset=0, length=size if index == 0 else fd_size)
            for index, fd_size in enumerate(fd_sizes)
        ]
    checked = []
    for n, extent in enumerate(extents):
        if extent.fd_index >= len(fd_sizes):
            raise InvalidArgument(
                f"{what} extent {n} names fd {extent.fd_index}, but only "
                f"{len(fd_sizes)} fd(s) were sent with the buffer"
            )
        if extent.length == 0:
            raise InvalidArgument(f"{what} extent {n} has length 0; give every extent a length")
        end = extent.offset + extent.length
        if end > fd_sizes[extent.fd_index]:
            raise InvalidArgument(
                f"{what} extent {n} ends at byte {end}, past the end of fd "
                f"{extent.fd_index} ({fd_sizes[extent.fd_index]} bytes)"
            )
        checked.append(pb.Extent(fd_index=extent.fd_index, offset=extent.offset, length=extent.length))
    return checked
