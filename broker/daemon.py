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
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from broker import __version__, mapping_types
from broker.api.fd_channel import FdChannelServer, Limits
from broker.api.grpc_service import BrokerService
from broker.core.registry import Registry
from broker.fd_ledger import FdLedger
from bufbroker.v1 import broker_pb2_grpc as pb_grpc

log = logging.getLogger("bufbroker")

GRPC_SOCKET = "grpc.sock"
FD_SOCKET = "fd.sock"
LOCK_FILE = "broker.lock"


class StartupError(Exception):
    """The broker cannot start; the message says why and what to do."""


@dataclass
class Config:
    socket_dir: Path
    limits: Limits = field(default_factory=Limits)


def default_socket_dir() -> Path:
    """$XDG_RUNTIME_DIR/bufbroker, or /run/bufbroker as root."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if os.geteuid() == 0 or not runtime:
        return Path("/run/bufbroker")
    return Path(runtime) / "bufbroker"


def prepare_socket_dir(path: Path, stack: ExitStack) -> None:
    """Create the dir 0770, lock it, and clear sockets a dead broker left."""
    try:
        path.mkdir(mode=0o770, parents=True, exist_ok=True)
        os.chmod(path, 0o770)
    except OSError as error:
        raise StartupError(f"cannot create socket dir {path}: {error.strerror}; pick one you can write with --socket-dir")
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


def bind_fd_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    sock.listen(128)
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


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    """Run the broker until SIGINT/SIGTERM (or until the task is cancelled)."""
    types = mapping_types.load_mapping_types()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    with ExitStack() as stack:
        prepare_socket_dir(config.socket_dir, stack)
        fd_limit = raise_fd_limit()
        ledger = FdLedger()
        registry = Registry(ledger)
        fd_path = config.socket_dir / FD_SOCKET
        grpc_path = config.socket_dir / GRPC_SOCKET
        channels = FdChannelServer(str(fd_path), registry, ledger, config.limits, __version__)
        service = BrokerService(registry, channels, ledger, __version__)
        channels.on_session_end = service.session_ended

        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_BrokerServicer_to_server(service, server)
        if server.add_insecure_port(f"unix:{grpc_path}") == 0:
            raise StartupError(f"cannot bind {grpc_path}")
        await server.start()
        stack.callback(_unlink, grpc_path)
        os.chmod(grpc_path, 0o660)

        listener = bind_fd_socket(fd_path)
        stack.callback(_unlink, fd_path)
        channels.start(listener)
        stack.callback(channels.stop)

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
            stack.callback(loop.remove_signal_handler, signum)

        log.info(
            "bufbroker %s serving grpc=%s fd=%s (pid %d, mapping types: %s, fd limit %d)",
            __version__,
            grpc_path,
            fd_path,
            os.getpid(),
            ", ".join(types),
            fd_limit,
        )
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
            log.info("stopping: signal received")
        finally:
            channels.stop()
            await server.stop(grace=1.0)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
