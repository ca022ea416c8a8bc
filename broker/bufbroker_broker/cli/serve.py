"""`bufbroker serve`: run the broker daemon."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from bufbroker_broker.cli._args import add_settings, load_settings


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser(
        "serve",
        help="run the broker daemon",
        description="Run the broker: gRPC on DIR/grpc.sock, the fd channel on DIR/fd.sock, "
        "HTTP health and metrics on --http. On SIGTERM or SIGINT it stops accepting sessions, "
        "revokes every buffer (importers are told 'broker shutting down'), waits up to "
        "--drain-timeout for them to detach, and exits 0. Settings come from flags, then "
        "BUFBROKER_* environment variables, then the --config TOML file, then defaults.",
    )
    add_settings(serve)


def run(args: argparse.Namespace) -> int:
    from bufbroker_broker.server.daemon import StartupError, serve
    from bufbroker_broker.server.settings import SettingsError

    try:
        settings, origins = load_settings(args)
    except SettingsError as error:
        print(f"bufbroker: cannot start: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(settings, origins))
    except (StartupError, TypeError) as error:  # TypeError: an incomplete mapping type plugin
        print(f"bufbroker: cannot start: {error}", file=sys.stderr)
        return 1
    return 0
