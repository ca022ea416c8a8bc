"""The example's own hand-off channel: slot numbers, never pixels.

Each message is a few packed integers sent over a pipe between two
processes (a ``multiprocessing`` connection). ``Channel`` counts the bytes
it sends, so the report can say exactly how much crossed the process
boundary beside the pixels that did not.
"""

from __future__ import annotations

import struct
from typing import Any

END = 0xFFFFFFFF  # in the slot field: no more frames / this consumer detached

# decoder -> analyser: frame `seq` is in pool slot `slot`, written at buffer generation `generation`
FRAME = struct.Struct("<III")
# analyser -> encoder: the same, plus what the analyser read from it
ANALYSED = struct.Struct("<IIIif")
# consumer -> decoder: done with slot `slot` (holding frame `seq`)
RELEASE = struct.Struct("<II")

# multiprocessing.Connection frames each message with a 4-byte length.
CONNECTION_HEADER = 4


class Channel:
    """One direction of a pipe carrying fixed-size packed messages."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.bytes_sent = 0
        self.messages_sent = 0

    def send(self, layout: struct.Struct, *values: Any) -> None:
        data = layout.pack(*values)
        self.connection.send_bytes(data)
        self.bytes_sent += len(data) + CONNECTION_HEADER
        self.messages_sent += 1

    def receive(self, layout: struct.Struct) -> tuple:
        return layout.unpack(self.connection.recv_bytes(layout.size))

    def close(self) -> None:
        self.connection.close()
