"""`bufbroker explain`: dry-run a negotiation over gRPC and print its trace matrix.

The accept list is built by the SDK from type names; a type the SDK does not
know is sent by name with its defaults, and the broker says whether it knows
it. So this client never loads the daemon's mapping-type plugins.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bufbroker_broker.cli._args import add_socket_dir


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    explain = commands.add_parser(
        "explain",
        help="dry-run a negotiation and print its trace matrix",
        description="Ask the broker what an attach to BUFFER with this accept list would negotiate, "
        "without attaching, and print the trace: offers (rows, exporter order) x matches (columns, "
        "importer order), each examined pair's verdict and reason. Uses the gRPC Explain call, so it "
        "works with HTTP off. Exits 0 when an attach would succeed, 1 when it would fail, 2 when the "
        "question could not be asked (no broker, no such buffer, an unknown type).",
    )
    add_socket_dir(explain)
    explain.add_argument("buffer", metavar="BUFFER", help="buffer id or name")
    explain.add_argument(
        "--accept",
        default="",
        metavar="TYPES",
        help="comma-separated mapping types in the importer's order, e.g. udmabuf,memfd "
        "(default: none, a compat importer, which gets memfd)",
    )
    explain.add_argument(
        "--access", choices=["read", "read_write"], default="read", help="what the importer asks for (default read)"
    )


def accept_by_name(names: list[str], access: str) -> list[Any]:
    """Wire matches for type names; names the SDK does not know go as plugins with default messages."""
    from bufbroker import specs
    from bufbroker.v1 import mapping_types_pb2 as mpb

    matches = []
    for name in names:
        if name in specs.TYPE_NAMES:
            matches.extend(specs.accept_to_wire([name], access))
        else:
            match = mpb.Match()
            match.plugin.type_name = name
            matches.append(match)
    return matches


def run(args: argparse.Namespace) -> int:
    import bufbroker
    from bufbroker import specs
    from bufbroker.v1 import broker_pb2 as pb
    from bufbroker_broker.server.observe.introspection import trace_matrix

    accept = [name.strip() for name in args.accept.split(",") if name.strip()]
    request = pb.ExplainRequest(accept=accept_by_name(accept, args.access), access=specs.access_value(args.access))
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
    print(
        f"{label}: offers [{', '.join(offers)}]; accept [{', '.join(accept) or 'compat: memfd'}], access {args.access}"
    )
    print(format_trace_matrix(trace_matrix(offers, accept or ["memfd"], answer.trace)))
    if answer.map_type:
        print(f"an attach would negotiate {answer.map_type}")
        return 0
    print(f"an attach would fail: {answer.error}")
    return 1


def format_trace_matrix(matrix: Any) -> str:
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
    lines = ["  ".join([" " * first] + [h.ljust(w) for h, w in zip(heads, widths, strict=True)]).rstrip()]
    for label, row in zip(rows, cells, strict=True):
        lines.append("  ".join([label.ljust(first)] + [c.ljust(w) for c, w in zip(row, widths, strict=True)]).rstrip())
    reasons = [
        f"  offer {i} x match {j}: {verdict}: {reason}"
        for i, row in enumerate(matrix.cells)
        for j, (verdict, reason, _) in enumerate(row)
        if reason
    ]
    if reasons:
        lines += ["reasons:", *reasons]
    return "\n".join(lines)
