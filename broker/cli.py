"""The `bufbroker` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from broker import __version__

DESCRIPTION = """\
bufbroker shares memory buffers between processes on one Linux host.
An exporter registers a buffer with the mapping types it offers; an
importer attaches with the types it accepts; the broker negotiates one
(exporter order wins) and passes the real file descriptors.
"""


def _socket_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory holding grpc.sock and fd.sock (default: $BUFBROKER_SOCKET_DIR, "
        "else $XDG_RUNTIME_DIR/bufbroker, or /run/bufbroker as root)",
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
}


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; defaults stay None so only given flags count as flags."""
    from broker.settings import BrokerSettings

    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help="TOML file with settings (top level or a [broker] table)")
    for name, field in BrokerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = field.annotation if field.annotation in (int, float) else str
        default = "$XDG_RUNTIME_DIR/bufbroker, or /run/bufbroker as root" if field.default_factory else field.default
        parser.add_argument(
            flag,
            dest=name,
            type=Path if name == "socket_dir" else kind,
            default=None,
            metavar=METAVARS.get(name, "N"),
            help=f"{field.description} (default: {default}; env BUFBROKER_{name.upper()})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bufbroker", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"bufbroker {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser(
        "serve",
        help="run the broker daemon",
        description="Run the broker: gRPC on DIR/grpc.sock, the fd channel on DIR/fd.sock, "
        "HTTP health and metrics on --http. On SIGTERM or SIGINT it stops accepting sessions, "
        "revokes every buffer (importers are told 'broker shutting down'), waits up to "
        "--drain-timeout for them to detach, and exits 0. Settings come from flags, then "
        "BUFBROKER_* environment variables, then the --config TOML file, then defaults.",
    )
    _settings_arguments(serve)

    config = commands.add_parser("config", help="show the effective settings", description="Settings tools.")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION")
    config_commands.required = True
    show = config_commands.add_parser(
        "show",
        help="print the effective settings and where each came from",
        description="Print every setting `serve` would use with these flags, and its source.",
    )
    _settings_arguments(show)

    commands.add_parser(
        "doctor",
        help="what this host's kernel supports, and what to do about each missing piece",
        description="Probe memfd sealing, the fd limit, /dev/udmabuf, dma-heaps and the PCI topology, then "
        "each mapping type's verdict, printing a fix for whatever is missing. Exit 0 when everything is "
        "there, 1 when an optional piece is missing, 2 when the broker cannot work here.",
    )
    health = commands.add_parser(
        "health",
        help="exit 0 if the broker serves, 1 if not (for probes)",
        description="Ask the broker's gRPC health service (grpc.health.v1) on DIR/grpc.sock; "
        "exit 0 when it answers SERVING, 1 otherwise. For probes that cannot speak HTTP.",
    )
    _socket_dir_argument(health)
    health.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS", help="give up after this long (default 3)")

    ls = commands.add_parser("ls", help="list registered buffers", description="List the broker's buffers.")
    _socket_dir_argument(ls)

    explain = commands.add_parser(
        "explain",
        help="dry-run a negotiation and print its trace matrix",
        description="Ask the broker what an attach to BUFFER with this accept list would negotiate, "
        "without attaching, and print the trace: offers (rows, exporter order) x matches (columns, "
        "importer order), each examined pair's verdict and reason. Uses the gRPC Explain call, so it "
        "works with HTTP off. Exits 0 when an attach would succeed, 1 when it would fail, 2 when the "
        "question could not be asked (no broker, no such buffer, an unknown type).",
    )
    _socket_dir_argument(explain)
    explain.add_argument("buffer", metavar="BUFFER", help="buffer id or name")
    explain.add_argument(
        "--accept",
        default="",
        metavar="TYPES",
        help="comma-separated mapping types in the importer's order, e.g. udmabuf,memfd "
        "(default: none, a compat importer, which gets memfd)",
    )
    explain.add_argument("--access", choices=["read", "read_write"], default="read", help="what the importer asks for (default read)")

    top = commands.add_parser(
        "top",
        help="live view of sessions, buffers and rates (like pw-top)",
        description="Show the broker's sessions, buffers, their importers and fd rates, refreshed "
        "every --interval seconds until Ctrl-C. Uses the gRPC introspection calls, so it works with "
        "HTTP off. Its own session shows as idle, marked (this top).",
    )
    _socket_dir_argument(top)
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="seconds between refreshes (default 1)")
    how_long = top.add_mutually_exclusive_group()
    how_long.add_argument("--once", action="store_true", help="print one view (rates over one interval) and exit")
    how_long.add_argument("--iterations", type=int, default=0, metavar="N", help="refresh N times, then exit")

    demo = commands.add_parser(
        "demo",
        help="run a broker, an exporter and an importer, and check every frame",
        description="Start a broker in a temp dir, an exporter process writing numbered frames "
        "into a pool of 4 buffers and an importer process that attaches with "
        "accept=[segments, memfd], maps and checks every frame's checksum. Prints the "
        "negotiated type and frames per second; leaves nothing behind.",
    )
    demo.add_argument("--frames", type=int, default=240, help="frames to send (default 240)")
    demo.add_argument("--frame-size", type=int, default=1 << 20, metavar="BYTES", help="bytes per frame (default 1 MiB)")
    demo.add_argument(
        "--restart-broker-at",
        type=int,
        default=None,
        metavar="FRAME",
        help="kill the broker with SIGKILL after this many frames and start a new one: the "
        "pipeline keeps running and the demo prints how long the sessions took to come back",
    )

    example = commands.add_parser(
        "example",
        help="run an example pipeline end to end and print its report",
        description="video: a PyAV decoder, an analyser and an encoder in three processes share a pool "
        "of buffers through a broker in a temp dir; halfway the stream changes resolution and the "
        "decoder moves its buffers; then the same pipeline runs with frames copied through pipes. "
        "Needs PyAV: pip install 'bufbroker[video]'. See examples/video_pipeline/README.md.",
    )
    example.add_argument("name", choices=["video"], help="which example")
    example.add_argument("--frames", type=int, default=300, help="frames in the source video (default 300)")
    example.add_argument("--width", type=int, default=1280, help="width of the first half (default 1280)")
    example.add_argument("--height", type=int, default=720, help="height of the first half (default 720)")
    example.add_argument("--switch-to", default=None, metavar="WxH", help="size of the second half (default 1.5 times the first)")
    example.add_argument("--quick", action="store_true", help="48 frames, 320x180 then 480x270")
    example.add_argument("--no-compare", action="store_true", help="skip the run with frames copied through pipes")

    bench = commands.add_parser(
        "bench",
        help="benchmark bufbroker against gRPC bytes and shared_memory, side by side",
        description="Control-plane latency, zero-copy hand-off, scale and concurrency, each as a ratio "
        "to a baseline measured in the same run (see bench/ and issue 7). Prints a table.",
    )
    from bench.runner import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return run_serve(args)
    if args.command == "config":
        return run_config_show(args)
    if args.command == "health":
        return run_health(args)
    if args.command == "doctor":
        from broker.doctor import run_doctor

        return run_doctor()
    if args.command == "ls":
        return run_ls(args)
    if args.command == "explain":
        return run_explain(args)
    if args.command == "top":
        return run_top(args)
    if args.command == "demo":
        from broker.demo import run_demo

        return run_demo(args.frames, args.frame_size, args.restart_broker_at)
    if args.command == "example":
        from examples.video_pipeline.example import run_from_args

        return run_from_args(args)
    if args.command == "bench":
        from bench.runner import main as run_bench

        return run_bench(args)
    raise AssertionError(args.command)


def _load_settings(args: argparse.Namespace):
    from broker.settings import BrokerSettings, load_settings

    flags = {name: getattr(args, name) for name in BrokerSettings.model_fields}
    return load_settings(flags, args.config)


def run_serve(args: argparse.Namespace) -> int:
    from broker.daemon import StartupError, serve
    from broker.settings import SettingsError

    try:
        settings, _ = _load_settings(args)
    except SettingsError as error:
        print(f"bufbroker: cannot start: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(settings))
    except (StartupError, TypeError) as error:   # TypeError: an incomplete mapping type plugin
        print(f"bufbroker: cannot start: {error}", file=sys.stderr)
        return 1
    return 0


def run_config_show(args: argparse.Namespace) -> int:
    from broker.settings import SettingsError

    try:
        settings, origins = _load_settings(args)
    except SettingsError as error:
        print(f"bufbroker: {error}", file=sys.stderr)
        return 2
    for name, value in settings.model_dump().items():
        print(f"{name:<28} = {str(value):<32} # {origins[name]}")
    return 0


def run_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from broker.settings import default_socket_dir

    socket_dir = args.socket_dir or Path(os.environ.get("BUFBROKER_SOCKET_DIR") or default_socket_dir())
    target = f"unix:{socket_dir / 'grpc.sock'}"
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
        except grpc.RpcError as error:
            print(f"bufbroker health: no answer from {socket_dir}: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"bufbroker health: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def run_ls(args: argparse.Namespace) -> int:
    import bufbroker
    from bufbroker.v1 import broker_pb2 as pb

    try:
        with bufbroker.connect(args.socket_dir) as session:
            buffers = session.buffers()
    except bufbroker.BrokerError as error:
        print(f"bufbroker: {error}", file=sys.stderr)
        return 1
    header = f"{'ID':>6}  {'NAME':<24} {'PID':>7} {'SIZE':>12}  {'STATE':<8} {'OFFERS':<20} {'ATTACHMENTS':>11}"
    print(header)
    for b in buffers:
        state = "active" if b.state == pb.BUFFER_STATE_ACTIVE else "revoked"
        print(
            f"{b.id:>6}  {b.name or '-':<24} {b.exporter_pid:>7} {b.size:>12}  {state:<8} "
            f"{','.join(b.offer_types):<20} {b.attachment_count:>11}"
        )
    if not buffers:
        print("(no buffers registered)")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    import bufbroker
    from bufbroker.v1 import broker_pb2 as pb

    from broker import introspection, mapping_types

    try:
        mapping_types.load_mapping_types()   # so third-party types installed here travel with their messages
    except TypeError:
        pass   # a broken plugin: its name still travels; the broker says what is wrong
    accept = [name.strip() for name in args.accept.split(",") if name.strip()]
    access = introspection.access_by_name(args.access)
    request = pb.ExplainRequest(accept=introspection.accept_by_name(accept, access), access=access)
    if args.buffer.isdigit():
        request.buffer_id = int(args.buffer)
    else:
        request.buffer_name = args.buffer
    try:
        with bufbroker.connect(args.socket_dir) as session:
            answer = session.call("Explain", request)
            found = session.call(
                "ListBuffers",
                pb.ListBuffersRequest(name=request.buffer_name)
                if request.buffer_name
                else pb.ListBuffersRequest(after_id=request.buffer_id - 1, page_size=1),
            ).buffers
    except bufbroker.BrokerError as error:
        print(f"bufbroker explain: {error.message}", file=sys.stderr)
        return 2
    offers = list(found[0].offer_types) if found else []
    label = f"buffer {found[0].id} ({found[0].name})" if found and found[0].name else f"buffer {args.buffer}"
    print(f"{label}: offers [{', '.join(offers)}]; accept [{', '.join(accept) or 'compat: memfd'}], access {args.access}")
    print(format_trace_matrix(introspection.trace_matrix(offers, accept or ["memfd"], answer.trace)))
    if answer.map_type:
        print(f"an attach would negotiate {answer.map_type}")
        return 0
    print(f"an attach would fail: {answer.error}")
    return 1


def format_trace_matrix(matrix) -> str:
    """Offers (rows) x matches (columns) as a text table, then each reason."""
    heads = [f"match {j}: {name}" for j, name in enumerate(matrix.matches)]
    rows = [f"offer {i}: {name}" for i, name in enumerate(matrix.offers)]
    cells = [
        [
            ("* " if matrix.chosen == (i, j) else "") + verdict + (f" via {converter}" if converter else "")
            for j, (verdict, _, converter) in enumerate(row)
        ]
        for i, row in enumerate(matrix.cells)
    ]
    first = max([len(r) for r in rows] + [0])
    widths = [max([len(h)] + [len(c[j]) for c in cells]) for j, h in enumerate(heads)]
    lines = ["  ".join([" " * first] + [h.ljust(w) for h, w in zip(heads, widths)]).rstrip()]
    for label, row in zip(rows, cells):
        lines.append("  ".join([label.ljust(first)] + [c.ljust(w) for c, w in zip(row, widths)]).rstrip())
    reasons = [
        f"  offer {i} x match {j}: {verdict}: {reason}"
        for i, row in enumerate(matrix.cells)
        for j, (verdict, reason, _) in enumerate(row)
        if reason
    ]
    if reasons:
        lines += ["reasons:", *reasons]
    return "\n".join(lines)


def run_top(args: argparse.Namespace) -> int:
    import bufbroker

    from broker.top import run_top_view

    if args.interval <= 0 or args.iterations < 0:
        print("bufbroker top: --interval must be positive and --iterations not negative", file=sys.stderr)
        return 2
    try:
        with bufbroker.connect(args.socket_dir) as session:
            iterations = 1 if args.once else args.iterations
            run_top_view(session, args.interval, iterations)
    except bufbroker.BrokerError as error:
        print(f"bufbroker top: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
