"""`bufbroker config show`: the effective settings and where each came from."""

from __future__ import annotations

import argparse
import sys

from bufbroker_broker.cli._args import add_settings, load_settings


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    config = commands.add_parser("config", help="show the effective settings", description="Settings tools.")
    actions = config.add_subparsers(dest="config_command", metavar="ACTION")
    actions.required = True
    show = actions.add_parser(
        "show",
        help="print the effective settings and where each came from",
        description="Print every setting `serve` would use with these flags, and its source.",
    )
    add_settings(show)


def run(args: argparse.Namespace) -> int:
    from bufbroker_broker.server.settings import SettingsError

    try:
        settings, origins = load_settings(args)
    except SettingsError as error:
        print(f"bufbroker: {error}", file=sys.stderr)
        return 2
    for name, value in settings.model_dump().items():
        print(f"{name:<28} = {value!s:<32} # {origins[name]}")
    return 0
