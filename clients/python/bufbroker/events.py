"""A session's event stream, dispatched: to the attachments an event names, then to the user's handlers.

The broker streams MoveNotify, Revoked, AttachmentInvalidated and
ExporterGone (and more) to each session; the session's events thread hands
every one to ``EventDispatcher.dispatch``. StreamLinkOpened goes to the
stream it names (a consumer subscribed to a stream this session produces).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from bufbroker.attachment import Attachment
from bufbroker.streams import StreamRegistry
from bufbroker.v1 import broker_pb2 as pb

log = logging.getLogger("bufbroker")


class EventDispatcher:
    """Routes events to attachments and streams by id.

    It reads ``attachments`` and ``streams``, which its session keeps up to date.
    """

    def __init__(self, attachments: Mapping[int, Attachment], streams: StreamRegistry | None = None) -> None:
        self._attachments = attachments
        self._streams = streams
        self._handlers: list[Callable[[pb.Event], None]] = []

    def add_handler(self, handler: Callable[[pb.Event], None]) -> None:
        """Call ``handler(event)`` for every event, after the attachments it names handled it."""
        self._handlers.append(handler)

    def dispatch(self, event: pb.Event) -> None:
        """Handle one event (on the events thread); a failing handler is logged, not raised."""
        kind = event.WhichOneof("kind")
        if kind == "revoked":
            for attachment_id in event.revoked.attachment_ids:
                attachment = self._attachments.get(attachment_id)
                if attachment is not None:
                    attachment._on_revoked(event.revoked.reason)
        elif kind == "move_notify":
            attachment = self._attachments.get(event.move_notify.attachment_id)
            if attachment is not None:
                attachment._on_move_notify(event.move_notify.reason)
        elif kind == "attachment_invalidated":
            attachment = self._attachments.get(event.attachment_invalidated.attachment_id)
            if attachment is not None:
                attachment._on_invalidated(event.attachment_invalidated.reason)
        elif kind == "exporter_gone":
            for attachment in list(self._attachments.values()):
                if attachment.buffer_id == event.exporter_gone.buffer_id:
                    attachment._on_exporter_gone()
        elif kind == "stream_link_opened" and self._streams is not None:
            try:
                self._streams.route(event.stream_link_opened)
            except Exception:
                log.exception("bufbroker: could not open a stream link")
        elif kind == "stream_renegotiate" and self._streams is not None:
            stream = self._streams.get(event.stream_renegotiate.stream_id)
            if stream is not None:
                stream._on_renegotiate(event.stream_renegotiate)
        for handler in list(self._handlers):
            try:
                handler(event)
            except Exception:
                log.exception("bufbroker: an event callback failed")
