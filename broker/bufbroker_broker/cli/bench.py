"""`bufbroker bench`: bufbroker beside gRPC bytes and shared_memory, as ratios (runs from a source checkout)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bufbroker_broker.cli.source_tree import import_from_checkout

# The groups bench/runner.py runs; kept here so `--help` needs no bench import.
GROUPS = ("control_plane", "handoff", "scale", "concurrency", "streams")


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = commands.add_parser(
        "bench",
        help="benchmark bufbroker against gRPC bytes and shared_memory, side by side",
        description="Control-plane latency, zero-copy hand-off, scale and concurrency, each as a ratio "
        "to a baseline measured in the same run (see bench/). Prints a table. Runs from a source checkout.",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="few samples, small sizes (a smoke run, ~30 s); numbers are not meaningful",
    )
    bench.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results as JSON to PATH")
    bench.add_argument("--only", action="append", choices=GROUPS, default=None, help="run only this group (repeatable)")


def run(args: argparse.Namespace) -> int:
    import_from_checkout("bench", "bench")
    from bench.runner import main as run_bench

    return int(run_bench(args))
