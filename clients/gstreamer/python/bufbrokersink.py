"""bufbrokersink: publish a GStreamer pipeline's video as a bufbroker stream.

    gst-launch-1.0 videotestsrc ! video/x-raw,format=NV12,width=1280,height=720 ! bufbrokersink stream=cam0

The first caps create the stream (``slots`` slot buffers laid out as
GStreamer lays out a frame: ``bufbroker.formats.derive_layout(align=4)``);
each buffer is copied into an acquired slot (one copy, counted in
``copies``) and published with its PTS, duration and the framerate in the
frame meta (JSON, see ``bufbroker_gst.framemeta``). A caps change (size,
format) moves the stream (``Stream.move``): consumers follow it. EOS waits
(up to ``stall-timeout``) for queue consumers to take every frame, then
the stream ends: consumers get end-of-stream.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, ClassVar

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstBase", "1.0")
gi.require_version("GstVideo", "1.0")
from bufbroker_gst.sdk import ensure_sdk  # noqa: E402
from gi.repository import GObject, Gst, GstBase, GstVideo  # noqa: E402

ensure_sdk()

from bufbroker_gst import caps as bcaps  # noqa: E402
from bufbroker_gst import framemeta, properties  # noqa: E402
from bufbroker_gst.messages import post_error, post_stats  # noqa: E402

import bufbroker  # noqa: E402

Gst.init(None)

ACQUIRE_STEP = 0.1  # seconds: how often a wait for a free slot checks for a flush
WAIT_STEP = 0.005  # seconds between looks for the consumers wait-consumers asks for
EOS_DRAIN = 10.0  # seconds EOS waits for queue consumers to take every frame


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"labels: {item!r} is not KEY=VALUE (give e.g. labels=camera=front,room=lab)")
        labels[key] = value
    return labels


def _words(text: str) -> list[str]:
    return [word.strip() for word in text.split(",") if word.strip()]


class BufbrokerSink(GstBase.BaseSink):  # type: ignore[misc]
    __gstmetadata__ = (
        "bufbroker stream sink",
        "Sink/Video",
        "Publishes video frames as a bufbroker stream: each buffer is copied into a slot of the stream's pool "
        "and published to the stream's consumers, which read it without a copy",
        "bufbroker",
    )
    __gsttemplates__ = (
        Gst.PadTemplate.new("sink", Gst.PadDirection.SINK, Gst.PadPresence.ALWAYS, bcaps.template_caps()),
    )
    __gproperties__: ClassVar[dict[str, tuple[Any, ...]]] = {
        "socket-dir": properties.SOCKET_DIR,
        "stream": (
            str,
            "stream",
            "The stream's name (required): consumers subscribe to it",
            "",
            GObject.ParamFlags.READWRITE,
        ),
        "slots": (int, "slots", "Slot buffers in the stream's pool", 1, 64, 4, GObject.ParamFlags.READWRITE),
        "offers": (
            str,
            "offers",
            "Mapping types offered for the slots, in the exporter's order of preference, comma-separated",
            "memfd",
            GObject.ParamFlags.READWRITE,
        ),
        "labels": (
            str,
            "labels",
            "Labels of the stream, KEY=VALUE comma-separated (e.g. camera=front,room=lab)",
            "",
            GObject.ParamFlags.READWRITE,
        ),
        "stall-timeout": (
            float,
            "stall timeout",
            "Seconds a consumer may hold a frame before its slot is reclaimed (0: the broker's setting, 2 s)",
            0.0,
            3600.0,
            0.0,
            GObject.ParamFlags.READWRITE,
        ),
        "wait-consumers": (
            int,
            "wait consumers",
            "Publish the first frame only once this many consumers subscribed (waits for them; 0: publish at once)",
            0,
            1024,
            0,
            GObject.ParamFlags.READWRITE,
        ),
        "frames": properties.counter("frames", "Frames published so far"),
        "copies": properties.counter(
            "copies", "Buffer copies made so far (one per frame: upstream's buffer into the slot)"
        ),
    }

    def __init__(self) -> None:
        super().__init__()
        self._props: dict[str, Any] = {
            "socket-dir": "",
            "stream": "",
            "slots": 4,
            "offers": "memfd",
            "labels": "",
            "stall-timeout": 0.0,
            "wait-consumers": 0,
        }
        self._session: bufbroker.Session | None = None
        self._stream: bufbroker.Stream | None = None
        self._layout: Any = None  # bufbroker.formats.Layout of the slots
        self._info: GstVideo.VideoInfo | None = None
        self._framerate: tuple[int, int] | None = None
        self._flushing = threading.Event()
        self.frames = 0
        self.copies = 0

    # --- properties ---------------------------------------------------------------------

    def do_get_property(self, prop: GObject.ParamSpec) -> Any:
        if prop.name == "frames":
            return self.frames
        if prop.name == "copies":
            return self.copies
        return self._props[prop.name]

    def do_set_property(self, prop: GObject.ParamSpec, value: Any) -> None:
        self._props[prop.name] = value

    # --- lifecycle ----------------------------------------------------------------------

    def do_start(self) -> bool:
        if not self._props["stream"]:
            self._error(Gst.ResourceError.SETTINGS, "bufbrokersink needs a stream name: set stream=NAME")
            return False
        try:
            _parse_labels(self._props["labels"])
            self._session = bufbroker.connect(
                self._props["socket-dir"] or None, reconnect=False, name=f"bufbrokersink {self._props['stream']}"
            )
        except (bufbroker.BrokerError, OSError, ValueError) as error:
            self._error(Gst.ResourceError.OPEN_WRITE, f"bufbrokersink: cannot reach the broker: {error}")
            return False
        self.frames = self.copies = 0
        self._flushing.clear()
        return True

    def do_stop(self) -> bool:
        self._end_stream()
        if self._session is not None:
            with contextlib.suppress(Exception):
                self._session.close()
            self._session = None
        return True

    def do_unlock(self) -> bool:
        self._flushing.set()
        return True

    def do_unlock_stop(self) -> bool:
        self._flushing.clear()
        return True

    def do_event(self, event: Gst.Event) -> bool:
        if event.type == Gst.EventType.EOS:
            self._end_stream(drain=True)
            post_stats(self, "bufbrokersink-stats", self.frames, self.copies)
        return bool(GstBase.BaseSink.do_event(self, event))

    # --- caps ---------------------------------------------------------------------------

    def do_set_caps(self, caps: Gst.Caps) -> bool:
        try:
            layout, info = bcaps.layout_for_caps(caps)
        except ValueError as error:
            self._error(Gst.StreamError.FORMAT, f"bufbrokersink: {error}")
            return False
        framerate = (info.fps_n, info.fps_d) if info.fps_n > 0 else None
        session = self._session
        if session is None:
            return False
        try:
            if self._stream is None:
                stall = self._props["stall-timeout"] or None
                self._stream = session.create_stream(
                    self._props["stream"],
                    slots=self._props["slots"],
                    size=layout.size,
                    layout=layout.to_dict(),
                    offers=[bufbroker.specs.spec_from_text(word) for word in _words(self._props["offers"])] or None,
                    labels=_parse_labels(self._props["labels"]),
                    stall_timeout=stall,
                )
            elif layout != self._layout:
                self._stream.move(size=layout.size, layout=layout.to_dict(), reason=f"caps now {caps.to_string()}")
        except (bufbroker.BrokerError, TimeoutError, ValueError) as error:
            verb = "create" if self._stream is None else "move"
            self._error(
                Gst.ResourceError.WRITE, f"bufbrokersink: cannot {verb} stream {self._props['stream']!r}: {error}"
            )
            return False
        self._layout, self._info, self._framerate = layout, info, framerate
        return True

    # --- frames -------------------------------------------------------------------------

    def do_render(self, buffer: Gst.Buffer) -> Gst.FlowReturn:
        stream, layout, info = self._stream, self._layout, self._info
        if stream is None or layout is None or info is None:
            self._error(Gst.CoreError.NEGOTIATION, "bufbrokersink: a buffer came before caps")
            return Gst.FlowReturn.NOT_NEGOTIATED
        while self.frames == 0 and len(stream.consumers()) < self._props["wait-consumers"]:
            if self._flushing.wait(WAIT_STEP):
                return Gst.FlowReturn.FLUSHING
        frame = None
        while frame is None:
            if self._flushing.is_set():
                return Gst.FlowReturn.FLUSHING
            try:
                frame = stream.acquire(timeout=ACQUIRE_STEP)
            except TimeoutError:
                continue  # every slot is held: wait on (a stalled consumer's slot is reclaimed after stall-timeout)
            except bufbroker.BrokerError as error:
                self._error(Gst.ResourceError.WRITE, f"bufbrokersink: stream {stream.name!r}: {error}")
                return Gst.FlowReturn.ERROR
        with frame:
            try:
                self._copy_into(buffer, info, layout, frame.memoryview())
            except ValueError as error:
                self._error(Gst.StreamError.FORMAT, f"bufbrokersink: {error}")
                return Gst.FlowReturn.ERROR
            self.copies += 1
            frame.publish(meta=framemeta.encode(buffer.pts, buffer.duration, self._framerate))
        self.frames += 1
        return Gst.FlowReturn.OK

    def _copy_into(self, buffer: Gst.Buffer, info: GstVideo.VideoInfo, layout: Any, slot: memoryview) -> None:
        """Copy one upstream buffer into a slot laid out as ``layout``: one memcpy, or plane by plane."""
        planes = bcaps.input_planes(buffer, info)
        ok, mapped = buffer.map(Gst.MapFlags.READ)
        if not ok:
            raise ValueError("cannot map the upstream buffer for reading")
        try:
            data = mapped.data
            if planes == [(p.offset, p.stride) for p in layout.planes]:
                if len(data) < layout.size:
                    raise ValueError(f"buffer of {len(data)} bytes, but {layout.size} expected for {info.finfo.name}")
                slot[: layout.size] = data[: layout.size]
                return
            self._copy_planes(data, planes, layout, slot)
        finally:
            buffer.unmap(mapped)

    @staticmethod
    def _copy_planes(data: memoryview, planes: list[tuple[int, int]], layout: Any, slot: memoryview) -> None:
        """Row by row (numpy does the rows): upstream's strides differ from the slot's (padded rows, e.g. a decoder)."""
        from bufbroker import formats

        source = formats.Layout(
            format=layout.format,
            width=layout.width,
            height=layout.height,
            modifier=layout.modifier,
            planes=tuple(
                formats.PlaneLayout(offset, stride, stride * (p.size // p.stride if p.stride else 0))
                for (offset, stride), p in zip(planes, layout.planes, strict=True)
            ),
        )
        for into, out_of in zip(formats.plane_views(slot, layout), formats.plane_views(data, source), strict=True):
            into[...] = out_of

    # --- helpers ------------------------------------------------------------------------

    def _end_stream(self, drain: bool = False) -> None:
        stream, self._stream = self._stream, None
        self._layout = None
        if stream is None:
            return
        if drain:
            timeout = max(EOS_DRAIN, self._props["stall-timeout"] or 0.0)
            with contextlib.suppress(bufbroker.BrokerError):
                stream.drain(timeout=timeout)
        with contextlib.suppress(Exception):
            stream.close()

    def _error(self, code: Any, text: str) -> None:
        post_error(self, code, text)


GObject.type_register(BufbrokerSink)
__gstelementfactory__ = ("bufbrokersink", Gst.Rank.NONE, BufbrokerSink)
