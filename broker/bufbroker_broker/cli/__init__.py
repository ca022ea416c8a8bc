"""The `bufbroker` command line: one module per command, dispatched through a table.

Each command module has ``add_parser(commands)`` and ``run(args) -> int`` and
imports its heavy dependencies inside ``run``, so `--help` and cheap commands
stay fast (the pattern of pip's ``commands/``).
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from bufbroker_broker import __version__
from bufbroker_broker.cli import (
    bench,
    config,
    demo,
    doctor,
    example,
    explain,
    health,
    ls,
    serve,
    stream,
    top,
)

DESCRIPTION = """\
bufbroker shares memory buffers between processes on one Linux host.
An exporter registers a buffer with the mapping types it offers; an
importer attaches with the types it accepts; the broker negotiates one
(exporter order wins) and passes the real file descriptors.
"""

# command name -> its module, in the order `--help` lists them
COMMANDS: dict[str, ModuleType] = {
    "serve": serve,
    "config": config,
    "doctor": doctor,
    "health": health,
    "ls": ls,
    "explain": explain,
    "top": top,
    "stream": stream,
    "demo": demo,
    "example": example,
    "bench": bench,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bufbroker", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"bufbroker {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for module in COMMANDS.values():
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = COMMANDS[args.command].run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
