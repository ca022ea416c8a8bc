"""bufbrokersrc: a bufbroker stream as a GStreamer video source, without copying.

    gst-launch-1.0 bufbrokersrc stream=cam0 ! videoconvert ! autovideosink

Subscribes to ``stream`` (waiting up to ``wait`` seconds for it); caps come
from the stream's layout (``bufbroker.formats``: the format's GStreamer
name, width, height; the framerate from the frame meta bufbrokersink
writes), with a ``GstVideoMeta`` giving the slot's offsets and strides.
Each buffer wraps the slot's fd (``GstFdAllocator``, the fd kept open by
the SDK's mapping): downstream reads the producer's pages, no copy. The
frame goes back to the producer when downstream frees the buffer — the
buffer comes from ``bufbroker_gst.slotpool.SlotBufferPool``, whose
release is that moment — not before. A layout downstream cannot read
without ``GstVideoMeta`` (padded rows) is copied into a plain buffer
when downstream does not take the meta (counted in ``copies``).

The producer's end of stream is EOS; a revoked slot or the lost broker is
an element error saying so.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from typing import Any, ClassVar

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstBase", "1.0")
gi.require_version("GstVideo", "1.0")
gi.require_version("GstAllocators", "1.0")
from bufbroker_gst.sdk import ensure_sdk  # noqa: E402
from gi.repository import GObject, Gst, GstAllocators, GstBase, GstVideo  # noqa: E402

ensure_sdk()

from bufbroker_gst import caps as bcaps  # noqa: E402
from bufbroker_gst import framemeta, properties  # noqa: E402
from bufbroker_gst.messages import post_error, post_stats  # noqa: E402
from bufbroker_gst.slotpool import SlotBufferPool  # noqa: E402

import bufbroker  # noqa: E402

Gst.init(None)

POLL_STEP = 0.1  # seconds between checks for a flush, a revoke or the broker's loss while waiting for a frame
SUBSCRIBE_STEP = 1.0  # seconds per Subscribe while waiting for the stream (a flush is seen between them)
MODES = ("queue", "latest")
FD_TYPES = ("memfd", "segments")  # mapping types whose fds GstFdAllocator wraps
DMABUF_TYPES = ("udmabuf", "dmabuf")  # ... and GstDmaBufAllocator


class BufbrokerSrc(GstBase.BaseSrc):  # type: ignore[misc]
    __gstmetadata__ = (
        "bufbroker stream source",
        "Source/Video",
        "Receives the frames of a bufbroker stream; buffers wrap the producer's slot memory (no copy) and each "
        "frame is released to the producer when downstream frees its buffer",
        "bufbroker",
    )
    __gsttemplates__ = (
        Gst.PadTemplate.new("src", Gst.PadDirection.SRC, Gst.PadPresence.ALWAYS, bcaps.template_caps()),
    )
    __gproperties__: ClassVar[dict[str, tuple[Any, ...]]] = {
        "socket-dir": properties.SOCKET_DIR,
        "stream": (str, "stream", "The name of the stream to receive (required)", "", GObject.ParamFlags.READWRITE),
        "accept": (
            str,
            "accept",
            "Mapping types accepted for the slots, in this consumer's order of preference, comma-separated "
            "(memfd, segments, udmabuf, dmabuf), each maybe with the (format, modifier) pairs it takes after a "
            "slash, joined by + (memfd/NV12+I420)",
            "memfd,segments",
            GObject.ParamFlags.READWRITE,
        ),
        "mode": (
            str,
            "mode",
            "queue: every frame, in order (the producer waits for this consumer up to its stall timeout); "
            "latest: only the newest frames (the others are dropped for this consumer)",
            "queue",
            GObject.ParamFlags.READWRITE,
        ),
        "wait": (
            float,
            "wait",
            "Seconds to wait for the stream to be created before failing",
            0.0,
            300.0,
            30.0,
            GObject.ParamFlags.READWRITE,
        ),
        "max-held": (
            int,
            "max held",
            "Frames downstream may hold at once (buffers not freed yet); more lets a queue downstream run ahead",
            1,
            64,
            2,
            GObject.ParamFlags.READWRITE,
        ),
        "frames": properties.counter("frames", "Frames pushed so far"),
        "copies": properties.counter(
            "copies", "Frames copied so far (0 unless the layout needs GstVideoMeta and downstream does not take it)"
        ),
    }

    def __init__(self) -> None:
        super().__init__()
        self.set_live(True)
        self.set_format(Gst.Format.TIME)
        self.set_do_timestamp(True)
        self._props: dict[str, Any] = {
            "socket-dir": "",
            "stream": "",
            "accept": "memfd,segments",
            "mode": "queue",
            "wait": 30.0,
            "max-held": 2,
        }
        self._session: bufbroker.Session | None = None
        self._sub: bufbroker.Subscription | None = None
        # The subscription is used from the streaming thread (receive) and from whatever thread frees a
        # buffer (release): the SDK wants one thread at a time, so both hold this lock.
        self._lock = threading.Lock()
        self._pool: SlotBufferPool | None = None
        self._fd_allocator = GstAllocators.FdAllocator.new()
        self._dmabuf_allocator = GstAllocators.DmaBufAllocator.new()
        self._caps: Gst.Caps | None = None
        self._layout: Any = None
        self._video_meta_ok = False
        self._flushing = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._trouble = ""  # why the stream cannot go on (a revoke), set from the session's events thread
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
        if prop.name == "mode" and value not in MODES:
            Gst.warning(f"bufbrokersrc: mode must be queue or latest, not {value!r}; keeping {self._props['mode']}")
            return
        self._props[prop.name] = value

    # --- lifecycle ----------------------------------------------------------------------

    def do_start(self) -> bool:
        if not self._props["stream"]:
            self._error(Gst.ResourceError.SETTINGS, "bufbrokersrc needs a stream name: set stream=NAME")
            return False
        try:
            self._session = bufbroker.connect(
                self._props["socket-dir"] or None, reconnect=False, name=f"bufbrokersrc {self._props['stream']}"
            )
        except (bufbroker.BrokerError, OSError) as error:
            self._error(Gst.ResourceError.OPEN_READ, f"bufbrokersrc: cannot reach the broker: {error}")
            return False
        self._pool = SlotBufferPool()
        self.frames = self.copies = 0
        self._trouble = ""
        self._caps = self._layout = None
        return True

    def do_stop(self) -> bool:
        with self._lock:
            sub, self._sub = self._sub, None
            session, self._session = self._session, None
        # Buffers still downstream keep their slot's pages mapped (GstFdMemory maps the fd itself); their
        # release after this finds the subscription gone and does nothing.
        if sub is not None:
            with contextlib.suppress(Exception):
                sub.close()
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()
        return True

    def do_unlock(self) -> bool:
        self._flushing.set()
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")
        return True

    def do_unlock_stop(self) -> bool:
        self._flushing.clear()
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 64)
        return True

    def do_negotiate(self) -> bool:
        return True  # caps come from the first frame's layout (create sets them)

    def do_get_caps(self, filter: Gst.Caps | None) -> Gst.Caps:
        caps = self._caps if self._caps is not None else bcaps.template_caps()
        return caps.intersect(filter) if filter is not None else caps

    def do_decide_allocation(self, query: Gst.Query) -> bool:
        found, _ = query.find_allocation_meta(GstVideo.video_meta_api_get_type())
        self._video_meta_ok = bool(found)
        return True

    # --- frames -------------------------------------------------------------------------

    def do_create(self, offset: int, size: int, buf: Gst.Buffer | None) -> tuple[Gst.FlowReturn, Gst.Buffer | None]:
        if self._sub is None:
            flow = self._subscribe()
            if flow != Gst.FlowReturn.OK:
                return flow, None
        sub = self._sub
        assert sub is not None
        while True:
            if self._flushing.is_set():
                return Gst.FlowReturn.FLUSHING, None
            if self._trouble:
                self._error(Gst.ResourceError.READ, f"bufbrokersrc: stream {sub.name!r}: {self._trouble}")
                return Gst.FlowReturn.ERROR, None
            try:
                with self._lock:
                    frame = sub.receive(0)
                break
            except TimeoutError:
                pass
            except bufbroker.EndOfStream:
                self._post_stats()
                return Gst.FlowReturn.EOS, None
            if not self._broker_alive():
                self._error(
                    Gst.ResourceError.READ,
                    f"bufbrokersrc: lost the broker at {self._session.socket_dir if self._session else '?'}; "
                    "the stream cannot be followed (start the broker again, then this pipeline)",
                )
                return Gst.FlowReturn.ERROR, None
            select.select([sub.fileno(), self._wake_r], [], [], POLL_STEP)
        try:
            return Gst.FlowReturn.OK, self._buffer_for(frame)
        except (ValueError, bufbroker.BrokerError) as error:
            with self._lock, contextlib.suppress(bufbroker.BrokerError):
                frame.release()
            self._error(Gst.StreamError.FORMAT, f"bufbrokersrc: stream {sub.name!r}, frame {frame.seq}: {error}")
            return Gst.FlowReturn.ERROR, None

    def _subscribe(self) -> Gst.FlowReturn:
        session = self._session
        if session is None:
            return Gst.FlowReturn.FLUSHING
        deadline = time.monotonic() + self._props["wait"]
        name = self._props["stream"]
        # TYPE[:ACCESS][/PAIRS] entries, as bufbroker.specs.spec_from_text reads them (memfd/NV12+I420).
        try:
            accept = [bufbroker.specs.spec_from_text(word) for word in self._props["accept"].split(",") if word.strip()]
        except ValueError as error:
            self._error(Gst.ResourceError.SETTINGS, f"bufbrokersrc: accept={self._props['accept']!r}: {error}")
            return Gst.FlowReturn.ERROR
        while True:
            left = deadline - time.monotonic()
            try:
                sub = session.subscribe(
                    name,
                    accept=accept or None,
                    mode=self._props["mode"],
                    max_held=self._props["max-held"],
                    wait=max(0.0, min(SUBSCRIBE_STEP, left)),
                )
                break
            except bufbroker.NotFound:
                if self._flushing.is_set():
                    return Gst.FlowReturn.FLUSHING
                if time.monotonic() >= deadline:
                    self._error(
                        Gst.ResourceError.NOT_FOUND,
                        f"bufbrokersrc: no stream {name!r} at {session.socket_dir} within {self._props['wait']:g} s "
                        "(is its producer running? see `bufbroker ls`)",
                    )
                    return Gst.FlowReturn.ERROR
            except bufbroker.BrokerError as error:
                self._error(Gst.ResourceError.OPEN_READ, f"bufbrokersrc: cannot subscribe to {name!r}: {error}")
                return Gst.FlowReturn.ERROR
        for attachment in sub.attachments:
            attachment.on_revoke(self._on_revoke)
        with self._lock:
            self._sub = sub
        return Gst.FlowReturn.OK

    def _on_revoke(self, attachment: Any, reason: str) -> None:
        self._trouble = f"slot buffer {attachment.buffer_id} was revoked: {reason}"
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def _broker_alive(self) -> bool:
        session = self._session
        return session is not None and session.wait_connected(0)  # 0: whether it is connected now

    def _buffer_for(self, frame: Any) -> Gst.Buffer:
        """A buffer showing ``frame`` (the slot's fd wrapped, no copy) that releases it when freed."""
        layout = bcaps.layout_of(frame.layout) if frame.layout is not None else None
        if layout is None:
            raise ValueError("the stream has no layout (its producer gave create_stream() no layout=): no caps for it")
        times = framemeta.decode(frame.meta)
        if layout != self._layout or self._caps is None:
            caps = bcaps.caps_for_layout(layout, times.framerate)
            if not self.set_caps(caps):
                raise ValueError(f"downstream refused caps {caps.to_string()}")
            self._caps, self._layout = caps, layout
        buffer = Gst.Buffer.new()
        mapping = frame.mapping
        extents = mapping.extents
        if mapping.type in FD_TYPES:
            allocator, wrap = self._fd_allocator, GstAllocators.FdAllocator.alloc
        elif mapping.type in DMABUF_TYPES:  # GstDmaBufMemory brackets CPU maps with DMA_BUF_IOCTL_SYNC
            allocator, wrap = self._dmabuf_allocator, GstAllocators.DmaBufAllocator.alloc_with_flags
        else:
            raise ValueError(f"mapping type {mapping.type!r} has no fd GStreamer can wrap; accept memfd or segments")
        left = layout.size
        for extent in extents:
            if left <= 0:
                break
            take = min(left, extent.length)
            # The SDK's mapping owns the fd (it closes it at unmap): GStreamer must not.
            memory = wrap(allocator, extent.fd, extent.offset + extent.length, GstAllocators.FdMemoryFlags.DONT_CLOSE)
            memory.resize(extent.offset, take)
            memory.mini_object.flags |= Gst.MemoryFlags.READONLY  # read access only: a writer downstream gets a copy
            buffer.append_memory(memory)
            left -= take
        if left > 0:
            raise ValueError(f"the slot holds {layout.size - left} bytes, its layout needs {layout.size}")
        if not bcaps.is_gst_default(layout):
            if not self._video_meta_ok:
                return self._copied(frame, buffer, layout, times)
            GstVideo.buffer_add_video_meta_full(
                buffer,
                GstVideo.VideoFrameFlags.NONE,
                bcaps.gst_video_format(layout),
                layout.width,
                layout.height,
                len(layout.planes),
                [p.offset for p in layout.planes] + [0] * (4 - len(layout.planes)),
                [p.stride for p in layout.planes] + [0] * (4 - len(layout.planes)),
            )
        self._stamp(buffer, frame, times)
        pool = self._pool
        assert pool is not None
        pooled = pool.wrap(buffer, lambda: self._release(frame))
        self.frames += 1
        return pooled

    def _copied(self, frame: Any, wrapped: Gst.Buffer, layout: Any, times: framemeta.FrameTimes) -> Gst.Buffer:
        """Downstream cannot take GstVideoMeta and the slot's rows are padded: copy into GStreamer's layout."""
        from bufbroker import formats

        target = formats.derive_layout(layout.format, layout.width, layout.height, align=bcaps.GST_ALIGN)
        out = Gst.Buffer.new_allocate(None, target.size, None)
        ok, mapped = out.map(Gst.MapFlags.WRITE)
        if not ok:
            raise ValueError(f"cannot map a new buffer of {target.size} bytes for writing")
        try:
            source = frame.memoryview()
            for into, out_of in zip(
                formats.plane_views(mapped.data, target), formats.plane_views(source, layout), strict=True
            ):
                into[...] = out_of
        finally:
            out.unmap(mapped)
            del wrapped
            with self._lock:
                frame.release()
        self._stamp(out, frame, times)
        self.copies += 1
        self.frames += 1
        return out

    @staticmethod
    def _stamp(buffer: Gst.Buffer, frame: Any, times: framemeta.FrameTimes) -> None:
        buffer.offset = frame.seq
        if times.duration is not None:
            buffer.duration = times.duration

    def _release(self, frame: Any) -> None:
        """Downstream freed the frame's buffer: give the slot back (in the thread that freed it)."""
        with self._lock:
            if self._sub is None or frame.released:
                return
            try:
                frame.release()
            except bufbroker.SlotReclaimed as error:
                Gst.warning(f"bufbrokersrc: {error}")
            except (bufbroker.BrokerError, OSError) as error:
                Gst.warning(f"bufbrokersrc: frame {frame.seq} not released: {error}")

    def _post_stats(self) -> None:
        post_stats(self, "bufbrokersrc-stats", self.frames, self.copies)

    def _error(self, code: Any, text: str) -> None:
        post_error(self, code, text)


GObject.type_register(BufbrokerSrc)
__gstelementfactory__ = ("bufbrokersrc", Gst.Rank.NONE, BufbrokerSrc)
