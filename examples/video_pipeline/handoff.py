"""What travels between the stages: stream names and a few bytes of meta per frame, never pixels.

The stages are separate commands that share only the broker's socket dir.
They find each other by stream name: the decoder produces ``decoded``
(the pictures, in a pool of slot buffers), the analyser consumes it and
produces ``analysed`` (one small frame per picture whose meta holds what it
read from the pixels), and the encoder consumes both. Each frame message
is one datagram on the link the broker set up between producer and
consumer (``bufbroker.streams``); the broker sees none of them.

Each stage writes one JSON object when it is done (``--result FILE``, else
stdout): what the report and the checks read.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DECODED = "decoded"
ANALYSED = "analysed"
# The stages' session names (shown by `bufbroker ls`, `top` and the dashboard beside their pids).
DECODER, ANALYSER, ENCODER = "video-decoder", "video-analyser", "video-encoder"

# decoded frame meta: the decoder's frame index (0, 1, ...; stream seqs start at 1)
DECODED_META = struct.Struct("<I")
# analysed frame meta: the decoded stream's seq, the frame index, the barcode read, the mean luma
ANALYSED_META = struct.Struct("<QIif")

# How long a stage waits for the stream it consumes to appear, or for its consumers to subscribe.
STARTUP_TIMEOUT = 60.0
# How long a stage waits for a frame, a free slot or a drain.
STEP_TIMEOUT = 60.0


def write_result(result: dict[str, Any], path: str | None) -> None:
    """The stage's result: to ``path`` (written whole, then renamed) or stdout."""
    text = json.dumps(result)
    if path is None:
        print(text, flush=True)
        return
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text)
    partial.replace(target)


def wait_for_consumers(session: Any, stream: Any, names: Sequence[str], timeout: float = STARTUP_TIMEOUT) -> None:
    """Until the sessions called ``names`` subscribed to ``stream`` and their links reached this producer.

    A frame goes only to the consumers subscribed when it is published, so
    the producer waits for the ones it is meant for, by the names they
    connected with (``bufbroker.connect(name=...)``), as the broker lists
    them; anyone else who subscribes too (``bufbroker stream watch``) is
    welcome but not waited for.
    """
    from bufbroker.v1 import broker_pb2 as pb

    deadline = time.monotonic() + timeout
    while True:
        while len(stream.consumers()) < len(names):  # no RPC until enough links arrived
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"stream {stream.name!r}: {len(stream.consumers())} consumers subscribed in {timeout} s, "
                    f"waiting for {', '.join(names)}"
                )
            time.sleep(0.005)
        listed = session.call("ListStreams", pb.ListStreamsRequest(name=stream.name)).streams
        consumers = [c for s in listed if s.id == stream.id for c in s.consumers]
        missing = set(names) - {c.name for c in consumers}
        if not missing and len(stream.consumers()) >= len(consumers):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {stream.name!r}: {', '.join(sorted(missing))} did not subscribe in {timeout} s")
        time.sleep(0.01)


def fail(stage: str, error: BaseException) -> int:
    """Say why the stage failed, on stderr; its exit status.

    A negotiation that found nothing in common is the user's to fix (the
    stages' accept lists disagree): its message and the broker's trace say
    which pairs were offered and accepted, so no traceback. Anything else
    comes with its traceback.
    """
    import traceback

    from bufbroker import NoCommonMappingType, format_trace

    if not isinstance(error, NoCommonMappingType):
        traceback.print_exception(error, file=sys.stderr)
    print(f"video {stage}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    trace = getattr(error, "trace", None)
    if trace:
        print(f"video {stage}: the broker's trace:", file=sys.stderr)
        print("\n".join("    " + line for line in format_trace(trace).splitlines()), file=sys.stderr, flush=True)
    return 1
