"""The broker daemon: one asyncio loop serving gRPC and the fd channel.

Start-up order: load and validate mapping types (an incomplete plugin stops
us here), take the socket dir's lock (one live broker per dir), replace
stale sockets, bind both sockets, serve until SIGINT/SIGTERM, then unwind
in reverse order.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import resource
import signal
import socket
from collections.abc import Mapping
from contextlib import AsyncExitStack, ExitStack, suppress
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import broker_pb2_grpc as pb_grpc
from bufbroker_broker import __version__, mapping_types
from bufbroker_broker.core.fd_ledger import FdLedger
from bufbroker_broker.core.registry import Registry, Session, SessionLimits
from bufbroker_broker.host import capabilities
from bufbroker_broker.host.probe import probe_host_facts
from bufbroker_broker.server.fdchannel.calls import CallServer
from bufbroker_broker.server.fdchannel.server import FdChannelServer, Limits
from bufbroker_broker.server.grpc.service import BrokerService
from bufbroker_broker.server.grpc.timing import RpcTimingInterceptor, RpcTimings
from bufbroker_broker.server.grpc.undecodable import install as limit_undecodable_logs
from bufbroker_broker.server.limits import RequestLimits
from bufbroker_broker.server.operations import Operations
from bufbroker_broker.server.readiness import Readiness
from bufbroker_broker.server.settings import BrokerSettings
from bufbroker_broker.server.streams import StreamLimits, Streams

log = logging.getLogger("bufbroker")

GRPC_SOCKET = "grpc.sock"
FD_SOCKET = "fd.sock"
LOCK_FILE = "broker.lock"


class StartupError(Exception):
    """The broker cannot start; the message says why and what to do."""


def prepare_socket_dir(path: Path, stack: ExitStack | AsyncExitStack) -> None:
    """Create the dir 0770, lock it, and clear sockets a dead broker left."""
    try:
        path.mkdir(mode=0o770, parents=True, exist_ok=True)
    except OSError as error:
        raise StartupError(
            f"cannot create socket dir {path}: {error.strerror}; pick one you can write with --socket-dir"
        ) from None
    if path.stat().st_uid == os.geteuid():
        os.chmod(path, 0o770)
    elif not os.access(path, os.W_OK | os.X_OK):
        # A dir someone else made (a Kubernetes emptyDir, a bind mount) is
        # used as it is, if we may create sockets in it.
        raise StartupError(
            f"socket dir {path} belongs to uid {path.stat().st_uid} and is not writable by uid {os.geteuid()}; fix its owner or mode"
        )
    lock_path = path / LOCK_FILE
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
    stack.callback(os.close, lock_fd)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(lock_fd, 32, 0).decode(errors="replace").strip() or "unknown"
        raise StartupError(
            f"a live broker (pid {holder}) already serves {path}; stop it first, or "
            "start this one with another --socket-dir"
        ) from None
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
    for name in (GRPC_SOCKET, FD_SOCKET):
        stale = path / name
        if stale.exists() or stale.is_symlink():
            # We hold the lock, so whoever made this socket is dead.
            log.info("replacing stale socket %s", stale)
            stale.unlink()


# Pending fd-channel connections the kernel queues before a connect fails
# with EAGAIN (the SDK connects with a timeout, so it does not wait for room).
# 128 was too few when a few hundred clients start at once (the load test);
# the kernel caps it at net.core.somaxconn.
FD_LISTEN_BACKLOG = 4096


def bind_fd_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    sock.listen(FD_LISTEN_BACKLOG)
    return sock


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def settings_table(settings: BrokerSettings, origins: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(name, value as text, source) of every setting, as `config show` prints them (GetSettings).

    Secrets stay here: the admin token travels as its file's path, never its content.
    """
    origins = origins or {}
    return [(name, str(value), origins.get(name, "unknown")) for name, value in settings.model_dump().items()]


async def serve(settings: BrokerSettings, origins: Mapping[str, str] | None = None) -> None:
    """Run the broker until SIGINT/SIGTERM, then drain and stop.

    ``origins`` says where each setting came from (``load_settings``), for GetSettings.

    Everything started is registered on one exit stack, so whatever fails
    part-way, what was set up is torn down in reverse order.
    """
    types = mapping_types.load_mapping_types()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    socket_dir = settings.socket_dir
    limits = Limits(
        pending_fd_timeout=settings.pending_fd_timeout,
        max_pending_fds=settings.max_pending_fds,
        max_send_queue=settings.max_send_queue,
        send_timeout=settings.fd_send_timeout,
        max_sessions=settings.max_sessions,
        max_sessions_per_uid=settings.max_sessions_per_uid,
        max_unread_replies=settings.max_unread_replies,
    )
    broker_service_name = pb.DESCRIPTOR.services_by_name["Broker"].full_name
    async with AsyncExitStack() as stack:
        prepare_socket_dir(socket_dir, stack)
        fd_limit = raise_fd_limit()
        limits.fd_limit, limits.fd_reserve = fd_limit, settings.fd_reserve or fd_limit * 5 // 8
        ledger = FdLedger(close=os.close)
        # Probed once: every match reads these facts, none looks at /dev or /sys.
        host = probe_host_facts(str(settings.sysfs_root))
        registry = Registry(
            ledger,
            limits=SessionLimits(
                max_buffers=settings.max_buffers_per_session,
                max_attachments=settings.max_attachments_per_session,
                max_mappings=settings.max_mappings_per_session,
                max_fds=settings.max_fds_per_session,
            ),
            converters=mapping_types.load_converters(max_copy_bytes=settings.max_copy_bytes),
            host=host,
        )
        fd_path, grpc_path = socket_dir / FD_SOCKET, socket_dir / GRPC_SOCKET
        channels = FdChannelServer(str(fd_path), registry, ledger, limits, __version__)
        operations = Operations(registry, ledger, move_timeout=settings.move_timeout, limits=RequestLimits.of(settings))
        service = BrokerService(operations, channels, __version__, settings_table(settings, origins))
        streams = Streams(operations, channels, StreamLimits.of(settings))
        streams.notify = service.notify  # stream_link_opened reaches the producer as every event does
        service.streams = streams

        def session_ended(session: Session) -> None:
            streams.session_ended(session)  # its streams end, its links are forgotten
            service.session_ended(session)

        channels.on_session_end = session_ended
        readiness = Readiness()

        rpc_timings = RpcTimings()
        CallServer(operations, channels, rpc_timings)  # answers the SDK's fast path on call channels
        limit_undecodable_logs()  # grpc logs each undecodable body with a traceback: one line per period
        # grpc.sock is as open as fd.sock: cap connections (over it grpc-core closes them at accept), close
        # connections that never send their preface or sit with no RPC, and bound RPCs per connection and in all.
        grpc_connections = settings.grpc_max_connections or max(1, min(fd_limit // 8, 1024))
        server = grpc.aio.server(
            interceptors=[RpcTimingInterceptor(rpc_timings)],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", settings.max_request_bytes),
                ("grpc.max_allowed_incoming_connections", grpc_connections),
                ("grpc.server_handshake_timeout_ms", int(settings.grpc_handshake_timeout * 1000)),
                ("grpc.max_connection_idle_ms", int(settings.grpc_idle_timeout * 1000)),
                ("grpc.max_concurrent_streams", settings.grpc_streams_per_connection),
            ],
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        )
        pb_grpc.add_BrokerServicer_to_server(service, server)
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection((broker_service_name, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
        if server.add_insecure_port(f"unix:{grpc_path}") == 0:
            raise StartupError(f"cannot bind {grpc_path}")
        await server.start()
        stack.callback(_unlink, grpc_path)
        stack.push_async_callback(server.stop, 1.0)
        os.chmod(grpc_path, 0o660)

        listener = bind_fd_socket(fd_path)
        stack.callback(_unlink, fd_path)
        channels.start(listener)
        stack.callback(channels.stop)

        if settings.http_address is not None:
            await start_http(
                settings, readiness, operations, stack, channels=channels, rpc_timings=rpc_timings, streams=streams
            )

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
            stack.callback(loop.remove_signal_handler, signum)

        for name in ("", broker_service_name):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        readiness.serving = True
        log.info(
            "bufbroker %s serving grpc=%s fd=%s http=%s (pid %d, mapping types: %s, fd limit %d)",
            __version__,
            grpc_path,
            fd_path,
            settings.http,
            os.getpid(),
            ", ".join(types),
            fd_limit,
        )
        # What this host's kernel supports (udmabuf, dma-heaps, ...); `bufbroker doctor` says what to do.
        checks = capabilities.probe_host(capabilities.HostPaths(sysfs=str(settings.sysfs_root)), host)
        log.info("host capabilities: %s", capabilities.summary(checks))
        await stop.wait()
        log.info("stopping: signal received; draining for up to %s s", settings.drain_timeout)
        readiness.draining = True
        await health.enter_graceful_shutdown()
        await drain(registry, channels, settings.drain_timeout)
    log.info("stopped")


async def drain(registry: Registry, channels: FdChannelServer, timeout: float) -> None:
    """Refuse new sessions, revoke every buffer, wait for importers to detach."""
    channels.stop_accepting()
    for buffer in list(registry.buffers.values()):
        registry.buffer_revoke(buffer, "broker shutting down")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while registry.attachments and loop.time() < deadline:
        await asyncio.sleep(0.02)
    if registry.attachments:
        holders = sorted({a.session.pid for a in registry.attachments.values()})
        log.warning(
            "%d attachment(s) not detached within %s s (importer pids %s); closing anyway",
            len(registry.attachments),
            timeout,
            ", ".join(map(str, holders)),
        )


async def start_http(
    settings: BrokerSettings,
    readiness: Readiness,
    operations: Operations,
    stack: AsyncExitStack,
    channels: FdChannelServer | None = None,
    rpc_timings: RpcTimings | None = None,
    streams: Streams | None = None,
) -> None:
    """Serve the HTTP app in this loop until the stack unwinds."""
    # Imported here: FastAPI and uvicorn cost start-up time a broker run
    # with --http none should not pay.
    import uvicorn

    from bufbroker_broker.server.http.app import BrokerView, EmbeddedServer, create_app
    from bufbroker_broker.server.http.guards import HostCheck, bounded_h11
    from bufbroker_broker.server.http.sse import EventHub
    from bufbroker_broker.server.observe.activity import ActivityCounters
    from bufbroker_broker.server.observe.metrics import make_metrics_registry

    registry, ledger = operations.registry, operations.ledger
    address = settings.http_address
    assert address is not None, "start_http runs only when HTTP is on"
    host, port = address
    admin_token = read_admin_token(settings.admin_token_file) if settings.admin_token_file is not None else None
    activity = ActivityCounters(registry)
    events = EventHub(registry, queue_limit=settings.http_event_queue)
    metrics = make_metrics_registry(registry, ledger, activity, rpc_timings, events, __version__, streams=streams)
    view = BrokerView(
        operations,
        activity,
        events,
        channels=channels,
        admin_token=admin_token,
        version=__version__,
        max_page_bytes=settings.http_max_page_bytes,
        max_event_streams=max(1, settings.http_max_connections // 2),
        streams=streams,
    )
    app = create_app(readiness, metrics, __version__, view)
    allowed = [name for name in settings.http_allowed_hosts.split(",") if name.strip()]
    config = uvicorn.Config(
        HostCheck(app, host, port, allowed),
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=3,
        http=bounded_h11(settings.http_max_connections, settings.http_header_timeout),
        timeout_keep_alive=settings.http_keepalive_timeout,  # type: ignore[arg-type]  # typed int, used as seconds
        backlog=min(2048, max(16, settings.http_max_connections)),
    )
    server = EmbeddedServer(config)
    try:
        sockets = [config.bind_socket()]
    except (OSError, SystemExit):  # uvicorn logs the reason and exits on bind errors
        raise StartupError(
            f"cannot serve HTTP on {settings.http}: the address is in use or not available; "
            "pick another with --http HOST:PORT, or turn HTTP off with --http none"
        ) from None
    task = asyncio.create_task(server.serve(sockets=sockets), name="bufbroker-http")

    async def stop_http() -> None:
        events.close()  # end the event streams, or uvicorn waits for them
        server.should_exit = True
        await task

    stack.push_async_callback(stop_http)
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if admin_token is not None:
        log.info("HTTP admin endpoints are on (token from %s)", settings.admin_token_file)


def read_admin_token(path: Path) -> str:
    """The bearer token for the HTTP admin endpoints: the file's content, stripped."""
    try:
        token = path.read_text().strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as error:
        why = getattr(error, "strerror", None) or str(error)
        raise StartupError(
            f"cannot read the admin token file {path}: {why}; give a readable file with --admin-token-file"
        ) from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise StartupError(
            f"the admin token file {path} must hold one token of at least 16 characters without spaces "
            "(e.g. made with `python3 -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    if mode & 0o004:
        log.warning("the admin token file %s is readable by every user; chmod 600 it", path)
    return token


def _unlink(path: Path) -> None:
    with suppress(FileNotFoundError):
        path.unlink()
