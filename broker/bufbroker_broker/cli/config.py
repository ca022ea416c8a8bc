"""`bufbroker config show`: the effective settings and where each came from.

Offline (the default) it shows what `serve` would use with these flags in
this shell; with ``--running`` it asks the broker serving the socket dir
(GetSettings) what it runs with.
"""

from __future__ import annotations

import argparse
import sys

from bufbroker_broker.cli._args import add_settings, load_settings

OFFLINE_HEADER = (
    "# offline: the settings `bufbroker serve` would use with these flags in this shell, "
    "not those of a running broker (ask it with --running)"
)


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    config = commands.add_parser("config", help="show the effective settings", description="Settings tools.")
    actions = config.add_subparsers(dest="config_command", metavar="ACTION")
    actions.required = True
    show = actions.add_parser(
        "show",
        help="print the effective settings and where each came from",
        description="Print every setting `serve` would use with these flags, and its source. "
        "With --running, print those of the broker serving --socket-dir instead, as it reports them.",
    )
    show.add_argument(
        "--running",
        action="store_true",
        help="ask the running broker (at --socket-dir, default $BUFBROKER_SOCKET_DIR, else "
        "$XDG_RUNTIME_DIR/bufbroker) for its effective settings and their sources",
    )
    add_settings(show)


def format_setting(name: str, value: str, source: str) -> str:
    return f"{name:<28} = {value:<32} # {source}"


def run(args: argparse.Namespace) -> int:
    if args.running:
        return _show_running(args)
    from bufbroker_broker.server.settings import SettingsError

    try:
        settings, origins = load_settings(args)
    except SettingsError as error:
        print(f"bufbroker: {error}", file=sys.stderr)
        return 2
    print(OFFLINE_HEADER)
    for name, value in settings.model_dump().items():
        print(format_setting(name, str(value), origins[name]))
    return 0


def _show_running(args: argparse.Namespace) -> int:
    import bufbroker
    from bufbroker.v1 import broker_pb2 as pb
    from bufbroker_broker.server.settings import FIELDS

    ignored = [f"--{name.replace('_', '-')}" for name in FIELDS if name != "socket_dir" and getattr(args, name)]
    if args.config is not None:
        ignored.append("--config")
    if ignored:
        print(
            f"bufbroker: --running shows the running broker's settings; {', '.join(ignored)} would not apply "
            "(only --socket-dir picks the broker)",
            file=sys.stderr,
        )
        return 2
    try:
        with bufbroker.connect(args.socket_dir, reconnect=False) as session:
            answer = session.call("GetSettings", pb.GetSettingsRequest())
            where = session.socket_dir
    except bufbroker.BrokerError as error:
        print(f"bufbroker: {error}", file=sys.stderr)
        return 1
    print(f"# running: the broker at {where} (pid {answer.pid}, bufbroker {answer.version}) reports")
    for setting in answer.settings:
        print(format_setting(setting.name, setting.value, setting.source))
    return 0
