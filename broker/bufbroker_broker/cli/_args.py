"""Arguments several commands share: the socket dir and the broker's settings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SOCKET_DIR_HELP = (
    "directory holding grpc.sock and fd.sock (default: $BUFBROKER_SOCKET_DIR, "
    "else $XDG_RUNTIME_DIR/bufbroker, or /run/bufbroker as root)"
)

METAVARS = {
    "socket_dir": "DIR",
    "http": "HOST:PORT",
    "log_level": "LEVEL",
    "pending_fd_timeout": "SECONDS",
    "drain_timeout": "SECONDS",
    "move_timeout": "SECONDS",
    "fd_send_timeout": "SECONDS",
    "sysfs_root": "DIR",
    "admin_token_file": "FILE",
    "http_event_queue": "EVENTS",
    "http_max_connections": "CONNECTIONS",
    "http_header_timeout": "SECONDS",
    "http_keepalive_timeout": "SECONDS",
    "http_max_page_bytes": "BYTES",
    "http_allowed_hosts": "HOST,...",
    "grpc_max_connections": "CONNECTIONS",
    "grpc_idle_timeout": "SECONDS",
    "grpc_handshake_timeout": "SECONDS",
}


def add_socket_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket-dir", type=Path, default=None, metavar="DIR", help=SOCKET_DIR_HELP)


def add_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; defaults stay None so only given flags count as flags."""
    from bufbroker_broker.server.settings import BrokerSettings

    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file with settings (top level or a [broker] table)",
    )
    for name, field in BrokerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind: type[int | float | str | Path] = (
            Path
            if name == "socket_dir"
            else float
            if field.annotation is float
            else int
            if field.annotation is int
            else str
        )
        default = "$XDG_RUNTIME_DIR/bufbroker, or /run/bufbroker as root" if field.default_factory else field.default
        parser.add_argument(
            flag,
            dest=name,
            type=kind,
            default=None,
            metavar=METAVARS.get(name, "N"),
            help=f"{field.description} (default: {default}; env BUFBROKER_{name.upper()})",
        )


def load_settings(args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    """The settings these flags, the environment and --config give, and where each came from."""
    from bufbroker_broker.server.settings import BrokerSettings
    from bufbroker_broker.server.settings import load_settings as load

    flags = {name: getattr(args, name) for name in BrokerSettings.model_fields}
    return load(flags, args.config)
