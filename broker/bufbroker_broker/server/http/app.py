"""The HTTP face (FastAPI on uvicorn, in the broker's own event loop).

Health, readiness, Prometheus metrics, read-only introspection as JSON
(/v1/...), the live event stream (/v1/events), the dashboard (/) and, only
when the broker has an admin token, two mutating endpoints. Every handler
is ``async`` and builds its whole answer without awaiting, so each response
is one consistent snapshot taken on the event loop. Memory contents, fds
and session tokens never appear here.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import pydantic_core
import uvicorn
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from pydantic import StringConstraints

from bufbroker_broker.core import registry as core
from bufbroker_broker.core.errors import BrokerError, InvalidArgument
from bufbroker_broker.server.http import models as m
from bufbroker_broker.server.http.sse import EventHub, EventStreamResponse, parse_last_event_id
from bufbroker_broker.server.observe import introspection
from bufbroker_broker.server.observe.activity import ActivityCounters
from bufbroker_broker.server.observe.latency import REQUEST_STARTED
from bufbroker_broker.server.operations import Operations, dry_run_session
from bufbroker_broker.server.readiness import Readiness
from bufbroker_broker.server.streams import stream_info
from bufbroker_broker.server.wire import offers as wire_offers
from bufbroker_broker.server.wire.errors import http_status

# A label filter: key=value, the key not empty.
LabelFilter = Annotated[str, StringConstraints(pattern=r"^[^=]+=", max_length=512)]
MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_ID = 2**63 - 1
ADMIN_OFF = (
    "admin endpoints are off: start the broker with --admin-token-file FILE (a file holding a "
    "secret token) and send 'Authorization: Bearer <token>'"
)
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@dataclass
class BrokerView:
    """What the HTTP app may read (and, with an admin token, change)."""

    operations: Operations
    activity: ActivityCounters
    events: EventHub
    channels: Any = None  # bufbroker_broker.server.fdchannel.server.FdChannelServer: ends sessions
    admin_token: str | None = None  # None: admin endpoints are off
    version: str = ""
    started: float = field(default_factory=time.monotonic)
    max_page_bytes: int = 1 << 20  # bytes of buffers in one page (http_max_page_bytes)
    max_event_streams: int = 32  # open /v1/events streams (half of http_max_connections)
    streams: Any = None  # bufbroker_broker.server.streams.Streams: /v1/streams


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": m.Problem} for code in codes}


def _wants_openmetrics(accept: str) -> bool:
    """Whether ``accept`` ranks application/openmetrics-text at least as high as the text format.

    Prometheus asks for OpenMetrics first (``application/openmetrics-text;version=1.0.0,...,
    text/plain;version=0.0.4;q=0.5,*/*;q=0.1``); curl and browsers get the text format.
    """
    openmetrics_q = text_q = 0.0
    for entry in accept.split(","):
        media, *params = (part.strip() for part in entry.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media == "application/openmetrics-text":
            openmetrics_q = max(openmetrics_q, q)
        elif media in ("text/plain", "text/*", "*/*"):
            text_q = max(text_q, q)
    return openmetrics_q > 0 and openmetrics_q >= text_q


def create_app(
    readiness: Readiness, metrics: CollectorRegistry, version: str, broker: BrokerView | None = None
) -> FastAPI:
    """The HTTP app: health and metrics always; introspection when given ``broker``."""
    app = FastAPI(
        title="bufbroker",
        version=version,
        description="Read-only introspection of a bufbroker daemon: buffers, sessions, attachments, "
        "negotiation traces, live events and metrics. Memory contents, fds and session tokens never appear.",
        docs_url=None,
        redoc_url=None,
    )

    @app.get("/healthz", response_model=dict[str, str], tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is alive and its event loop answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=dict[str, str], responses={503: {"model": dict[str, str]}}, tags=["operations"])
    async def readyz() -> JSONResponse:
        """Ready when grpc.sock and fd.sock both accept and the broker is not draining."""
        if readiness.ready:
            return JSONResponse({"status": "ready"})
        reason = "draining" if readiness.draining else "starting"
        return JSONResponse({"status": reason}, status_code=503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}},
                },
                "description": "Prometheus text format, or OpenMetrics 1.0 when the Accept header asks for it",
            }
        },
        tags=["operations"],
    )
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus metrics, with the process_* and python_* collectors.

        The text exposition format, or OpenMetrics (ending in ``# EOF``) when ``Accept`` prefers
        ``application/openmetrics-text``, as Prometheus does.
        """
        headers = {"Vary": "Accept"}
        if _wants_openmetrics(request.headers.get("accept", "")):
            body = openmetrics.generate_latest(metrics)
            return Response(body, media_type=openmetrics.CONTENT_TYPE_LATEST, headers=headers)
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST, headers=headers)

    if broker is not None:
        _add_introspection(app, broker)
        _add_streams(app, broker)
        _add_admin(app, broker)
        _add_dashboard(app)

    @app.exception_handler(BrokerError)
    async def broker_error(request: Request, error: BrokerError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=http_status(error))

    return app


def _add_introspection(app: FastAPI, broker: BrokerView) -> None:
    operations = broker.operations
    registry = operations.registry

    @app.get("/v1/buffers", response_model=m.BufferPage, tags=["introspection"])
    async def list_buffers(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="buffers per page")] = DEFAULT_PAGE,
        cursor: Annotated[
            str | None, Query(max_length=20, pattern=r"^[0-9]*$", description="next_cursor of the previous page")
        ] = None,
        name: Annotated[str | None, Query(max_length=256, description="exact buffer name")] = None,
        label: Annotated[list[LabelFilter] | None, Query(description="key=value; repeat to require several")] = None,
        exporter_pid: Annotated[int | None, Query(ge=0, lt=2**32)] = None,
        mapping_type: Annotated[str | None, Query(max_length=64, description="buffers offering this type")] = None,
        state: m.BufferState | None = None,
    ) -> m.BufferPage:
        """Buffers in id order, a page at a time, filtered; one snapshot per page."""
        labels = _parse_labels(label or [])
        listed = operations.list_buffers(
            _parse_cursor(cursor),
            limit,
            lambda b: (
                (name is None or b.name == name)
                and all(b.labels.get(k) == v for k, v in labels)
                and (exporter_pid is None or b.exporter.pid == exporter_pid)
                and (mapping_type is None or any(o.type.name == mapping_type for o in b.offers))
                and (state is None or b.state == state)
            ),
        )
        models, cut = _models_within(listed.buffers, broker.max_page_bytes)
        return m.BufferPage(
            buffers=models,
            total=listed.total,
            limit=limit,
            next_cursor=str(models[-1].id) if cut or listed.more else None,
        )

    @app.get("/v1/buffers/{buffer_id}", response_model=m.BufferDetail, responses=_problems(404), tags=["introspection"])
    async def get_buffer(buffer_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> m.BufferDetail:
        """One buffer with its offers, layout and attachments (each with its negotiated type and trace)."""
        return m.buffer_detail(registry.buffer_find(buffer_id))

    @app.get("/v1/sessions", response_model=m.SessionList, tags=["introspection"])
    async def list_sessions() -> m.SessionList:
        """Every open session: who (pid, uid, gid), its role, what it holds, compliance."""
        return m.SessionList(sessions=[m.session_model(s) for _, s in sorted(registry.sessions.items())])

    @app.get("/v1/attachments", response_model=m.AttachmentList, tags=["introspection"])
    async def list_attachments(
        buffer_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
        session_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    ) -> m.AttachmentList:
        """Every attachment (or a buffer's, or a session's), with its negotiated type and trace."""
        return m.AttachmentList(
            attachments=[
                m.attachment_model(a)
                for _, a in sorted(registry.attachments.items())
                if (buffer_id is None or a.buffer.id == buffer_id)
                and (session_id is None or a.session.id == session_id)
            ]
        )

    @app.get("/v1/mapping-types", response_model=m.MappingTypeList, tags=["introspection"])
    async def list_mapping_types() -> m.MappingTypeList:
        """Each registered mapping type, its description and whether this host supports it."""
        infos = introspection.list_mapping_types(registry.host)
        return m.MappingTypeList(mapping_types=[m.mapping_type_model(i) for i in infos])

    @app.post("/v1/explain", response_model=m.ExplainResult, responses=_problems(400, 404), tags=["introspection"])
    async def explain(request: Annotated[m.ExplainRequest, Body()]) -> m.ExplainResult:
        """A dry run of negotiation: what an attach would get, and the full trace matrix. Attaches nothing."""
        started = REQUEST_STARTED.set(time.perf_counter())
        try:
            return _explain(operations, request)
        finally:
            REQUEST_STARTED.reset(started)

    @app.get("/v1/stats", response_model=m.Stats, tags=["introspection"])
    async def stats() -> m.Stats:
        """Counts and counters since start (the dashboard's charts)."""
        return _stats(broker)

    @app.get("/v1/overview", response_model=m.Overview, tags=["introspection"])
    async def overview(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="at most this many buffers")] = 500,
    ) -> m.Overview:
        """Stats, sessions, the first ``limit`` buffers and their attachments: one snapshot."""
        models, cut = _models_within([b for _, b in sorted(registry.buffers.items())][:limit], broker.max_page_bytes)
        shown = {b.id for b in models}
        return m.Overview(
            stats=_stats(broker),
            sessions=[m.session_model(s) for _, s in sorted(registry.sessions.items())],
            buffers=models,
            buffers_total=len(registry.buffers),
            buffers_next_cursor=str(models[-1].id) if cut else None,
            attachments=[
                m.attachment_model(a) for _, a in sorted(registry.attachments.items()) if a.buffer.id in shown
            ],
        )

    @app.get(
        "/v1/events",
        response_class=EventStreamResponse,
        status_code=200,
        responses={
            200: {
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "Server-Sent Events",
            },
            **_problems(503),
        },
        tags=["introspection"],
    )
    async def events(
        last_event_id: Annotated[str | None, Header(max_length=20, description="resume after this event id")] = None,
        after: Annotated[
            str | None,
            Query(
                alias="last_event_id",
                max_length=20,
                description="resume after this event id when the Last-Event-ID header is absent "
                "(EventSource cannot send the header on its first request)",
            ),
        ] = None,
    ) -> EventStreamResponse:
        """Registry changes as Server-Sent Events, in order: ``event`` is the kind (registered,
        attached, mapped, moved, revoked, session-ended, ...), ``data`` is JSON with the ids and
        details, ``id`` the sequence number. A client that reads too slowly is dropped."""
        resume = last_event_id if last_event_id is not None else after
        if len(broker.events.clients) >= broker.max_event_streams:  # the rest of the connections stay for others
            raise HTTPException(
                503, f"{broker.max_event_streams} /v1/events streams are open, half of --http-max-connections"
            )
        return EventStreamResponse(broker.events, parse_last_event_id(resume))


def _add_streams(app: FastAPI, broker: BrokerView) -> None:
    """GET /v1/streams and /v1/streams/{name}: every live stream (an empty list when the broker has none)."""
    streams = broker.streams

    def snapshot(stream: Any) -> m.Stream:
        return m.stream_model(stream_info(stream, streams.clock(), streams.limits))

    @app.get("/v1/streams", response_model=m.StreamPage, tags=["introspection"])
    async def list_streams(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="streams per page")] = DEFAULT_PAGE,
        cursor: Annotated[
            str | None, Query(max_length=20, pattern=r"^[0-9]*$", description="next_cursor of the previous page")
        ] = None,
    ) -> m.StreamPage:
        """Live streams in id order, a page at a time: slots, policy, consumers and their reported counters."""
        live = streams.listed() if streams is not None else []
        after = _parse_cursor(cursor)
        page = [s for s in live if s.id > after][:limit]
        models: list[m.Stream] = []
        used, cut = 0, False
        for stream in page:
            model = snapshot(stream)
            size = len(pydantic_core.to_json(model)) + 1
            if models and used + size > broker.max_page_bytes:
                cut = True
                break
            models.append(model)
            used += size
        more = cut or (bool(page) and live[-1].id > page[-1].id)
        return m.StreamPage(
            streams=models, total=len(live), limit=limit, next_cursor=str(models[-1].id) if more and models else None
        )

    @app.get("/v1/streams/{name}", response_model=m.Stream, responses=_problems(404), tags=["introspection"])
    async def get_stream(name: Annotated[str, Path(min_length=1, max_length=256)]) -> m.Stream:
        """One stream by name."""
        found = streams.listed(name=name) if streams is not None else []
        if not found:
            raise HTTPException(404, f"no stream named {name!r}; list them with GET /v1/streams")
        return snapshot(found[0])


def _models_within(buffers: list[core.Buffer], max_bytes: int) -> tuple[list[m.Buffer], bool]:
    """The models of ``buffers``, in order, while their JSON stays within ``max_bytes``; whether some were cut.

    The first always goes in, so a page never comes back empty while buffers remain.
    """
    models: list[m.Buffer] = []
    used = 0
    for buffer in buffers:
        model = m.buffer_model(buffer)
        size = len(pydantic_core.to_json(model)) + 1
        if models and used + size > max_bytes:
            return models, True
        models.append(model)
        used += size
    return models, False


def _parse_cursor(cursor: str | None) -> int:
    return int(cursor) if cursor else 0


def _parse_labels(labels: list[str]) -> list[tuple[str, str]]:
    return [(key, value) for key, _, value in (entry.partition("=") for entry in labels)]


def _explain(operations: Operations, request: m.ExplainRequest) -> m.ExplainResult:
    if request.buffer_id is not None and request.buffer_name is not None:
        raise InvalidArgument("name the buffer once: give buffer_id or buffer_name, not both")
    has_buffer = request.buffer_id is not None or request.buffer_name is not None
    if has_buffer and request.offers is not None:
        raise InvalidArgument("give a buffer (buffer_id or buffer_name) or an offers list, not both")
    if not has_buffer and not request.offers:
        raise InvalidArgument("name a buffer (buffer_id or buffer_name) or give a non-empty offers list")
    # A dry run has no client session: explain for the uid/gid asked, else the broker's own.
    asker = dry_run_session(request.uid, request.gid)
    access = wire_offers.access_by_name(request.access)
    accept = wire_offers.accept_by_name(request.accept, access)
    if has_buffer:
        buffer = operations.find_buffer(request.buffer_id or 0, request.buffer_name or "", asker)
        answer = operations.explain(asker, accept, access, buffer=buffer)
        offers = [o.type.name for o in buffer.offers]
    else:
        answer = operations.explain(asker, accept, access, wire_offers=wire_offers.offers_by_name(request.offers or []))
        offers = [entry.partition(":")[0] for entry in request.offers or []]
    matches = [name.strip() for name in request.accept] or ["memfd"]
    return m.ExplainResult(
        would_attach=bool(answer.map_type),
        map_type=answer.map_type or None,
        error=answer.error or None,
        trace=m.trace_steps(answer.trace),
        matrix=m.trace_matrix(offers, matches, answer.trace),
    )


def _stats(broker: BrokerView) -> m.Stats:
    stats, activity = broker.operations.stats(), broker.activity
    return m.Stats(
        version=broker.version,
        pid=os.getpid(),
        uptime_seconds=round(time.monotonic() - broker.started, 3),
        sessions=stats.sessions,
        buffers=stats.buffers,
        attachments=stats.attachments,
        mappings=stats.mappings,
        fds_held=stats.fds_held,
        fds_received=stats.fds_received,
        fds_sent=stats.fds_sent,
        fds_expired=stats.fds_expired,
        negotiations=activity.negotiations_by_result(),
        moves=activity.moves,
        revokes=activity.revokes,
        last_event_id=broker.events.seq,
    )


def _add_admin(app: FastAPI, broker: BrokerView) -> None:
    """POST /v1/buffers/{id}/revoke and DELETE /v1/sessions/{id}: off (404) without a token."""
    bearer = HTTPBearer(auto_error=False, description="the token in the broker's --admin-token-file")
    enabled = broker.admin_token is not None
    operations = broker.operations

    async def require_admin(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not enabled:
            raise HTTPException(404, ADMIN_OFF)
        if credentials is None:
            raise HTTPException(
                401,
                "this endpoint needs 'Authorization: Bearer <token>' with the token from the broker's --admin-token-file",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.credentials.encode(), (broker.admin_token or "").encode()):
            raise HTTPException(403, "wrong admin token: use the one in the broker's --admin-token-file")

    admin: dict[str, Any] = {"dependencies": [Depends(require_admin)], "include_in_schema": enabled, "tags": ["admin"]}

    @app.post(
        "/v1/buffers/{buffer_id}/revoke", response_model=m.Revoked, responses=_problems(400, 401, 403, 404), **admin
    )
    async def revoke_buffer(
        buffer_id: Annotated[int, Path(ge=1, le=MAX_ID)],
        request: Annotated[m.RevokeRequest | None, Body()] = None,
    ) -> m.Revoked:
        """Revoke a buffer as an operator: importers are told, further attach and map fail."""
        buffer = operations.find_buffer(buffer_id)
        reason = (request.reason if request else "") or "revoked by an operator"
        operations.registry.buffer_revoke(buffer, reason)
        return m.Revoked(buffer_id=buffer.id, state="revoked", reason=reason)

    @app.delete("/v1/sessions/{session_id}", response_model=m.SessionEnded, responses=_problems(401, 403, 404), **admin)
    async def end_session(session_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> m.SessionEnded:
        """End a session as if its client hung up: its attachments detach, its buffers go."""
        connection = broker.channels.connections.get(session_id) if broker.channels is not None else None
        if connection is None or connection.closed:
            raise HTTPException(404, f"no open session {session_id}; list them with GET /v1/sessions")
        reason = "ended by an operator"
        pid = connection.session.pid
        broker.channels.end(connection, reason)
        return m.SessionEnded(session_id=session_id, pid=max(pid, 0), reason=reason)


def _add_dashboard(app: FastAPI) -> None:
    from bufbroker_broker.server.http.dashboard import ASSETS

    files = {name: (path.read_bytes(), media) for name, (path, media) in ASSETS.items()}
    headers = {
        "Content-Security-Policy": DASHBOARD_CSP,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }

    def serve(name: str) -> Response:
        body, media = files[name]
        return Response(body, media_type=media, headers=headers)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> Response:
        return serve("index.html")

    @app.get("/dashboard/{name}", include_in_schema=False)
    async def dashboard_asset(name: str) -> Response:
        if name not in files or name == "index.html":
            raise HTTPException(404, f"no dashboard file {name!r}")
        return serve(name)


class EmbeddedServer(uvicorn.Server):
    """uvicorn in our loop; the broker, not uvicorn, owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
