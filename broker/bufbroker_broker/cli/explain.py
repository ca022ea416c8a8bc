"""`bufbroker explain`: dry-run a negotiation over gRPC and print its trace matrix.

The accept list is built by the SDK from type names; a type the SDK does not
know is sent by name with its defaults, and the broker says whether it knows
it. So this client never loads the daemon's mapping-type plugins.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bufbroker_broker.cli._args import add_socket_dir

RESULT_FIELDS = """\
JSON (--json): one object on stdout, whatever the exit status:
  buffer     the buffer as `bufbroker ls --json` shows it (null when not found)
  offers     the buffer's offer types, exporter order
  accept     the types asked about, importer order ([]: a compat importer)
  access     "read" | "read_write"
  would_attach  true when an attach would succeed (exit 0)
  map_type   what an attach would negotiate (null when it would fail)
  error      why it would fail (exit 1) or why the question could not be
             asked (exit 2); null when it would attach
  error_code the broker's status for exit 2 (e.g. "NOT_FOUND",
             "INVALID_ARGUMENT"); null otherwise
  trace      [{offer_index, offer_type, match_index, match_type, verdict,
               reason, converter, format}] every examined pair, in order
               (format: the (format, modifier) pair a matched step chose)
  matrix     {offers, matches, cells: [[{verdict, reason, converter, format}]],
              chosen: {offer_index, match_index} | null}
Verdicts: type-differs, soft-mismatch, matched, error (not-examined in cells).
With exit 2 the human message also goes to stderr.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    explain = commands.add_parser(
        "explain",
        help="dry-run a negotiation and print its trace matrix",
        description="Ask the broker what an attach to BUFFER with this accept list would negotiate, "
        "without attaching, and print the trace: offers (rows, exporter order) x matches (columns, "
        "importer order), each examined pair's verdict and reason. Uses the gRPC Explain call, so it "
        "works with HTTP off. Exits 0 when an attach would succeed, 1 when it would fail, 2 when the "
        "question could not be asked (no broker, no such buffer, an unknown type).",
        epilog=RESULT_FIELDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_socket_dir(explain)
    explain.add_argument("buffer", metavar="BUFFER", help="buffer id or name")
    explain.add_argument(
        "--accept",
        default="",
        metavar="TYPES",
        help="comma-separated mapping types in the importer's order, e.g. udmabuf,memfd "
        "(default: none, a compat importer, which gets memfd); a type may list the (format, modifier) "
        "pairs it takes after a slash, joined by +: memfd/NV12+XRGB8888, dmabuf/NV12:I915_Y_TILED",
    )
    explain.add_argument(
        "--access", choices=["read", "read_write"], default="read", help="what the importer asks for (default read)"
    )
    explain.add_argument("--json", action="store_true", help="print one JSON object instead of the matrix (see below)")


def accept_by_name(names: list[str], access: str) -> list[Any]:
    """Wire matches for type names; names the SDK does not know go as plugins with default messages."""
    from bufbroker import specs
    from bufbroker.v1 import mapping_types_pb2 as mpb

    matches = []
    for entry in names:
        name, _, listed = entry.partition("/")
        pairs = [pair.strip() for pair in listed.split("+") if pair.strip()]
        if name in specs.TYPE_NAMES:
            matches.extend(specs.accept_to_wire([specs.spec_by_name(name, pairs)], access))
        else:
            match = mpb.Match(formats=specs.format_pairs_to_wire(pairs))
            match.plugin.type_name = name
            matches.append(match)
    return matches


def run(args: argparse.Namespace) -> int:
    import bufbroker
    from bufbroker import specs
    from bufbroker.v1 import broker_pb2 as pb
    from bufbroker_broker.server.observe.introspection import trace_matrix

    accept = [name.strip() for name in args.accept.split(",") if name.strip()]
    try:
        wire_accept = accept_by_name(accept, args.access)
    except ValueError as error:
        return _could_not_ask(args, accept, f"--accept: {error}", "INVALID_ARGUMENT")
    request = pb.ExplainRequest(accept=wire_accept, access=specs.access_value(args.access))
    if args.buffer.isdigit():
        if not 0 < int(args.buffer) < 2**63:
            return _could_not_ask(args, accept, f"buffer id {args.buffer} is out of range", "INVALID_ARGUMENT")
        request.buffer_id = int(args.buffer)
    else:
        request.buffer_name = args.buffer
    try:
        with bufbroker.connect(args.socket_dir) as session:
            answer = session.call("Explain", request)
            listed = session.call(
                "ListBuffers",
                pb.ListBuffersRequest(name=request.buffer_name)
                if request.buffer_name
                else pb.ListBuffersRequest(after_id=request.buffer_id - 1, page_size=1),
            ).buffers
    except bufbroker.BrokerError as error:
        return _could_not_ask(args, accept, error.message, error.code.name)
    # By id, the page starts after id - 1: it holds the next visible buffer, which may be another one.
    found = next(
        (b for b in listed if (b.name == args.buffer if request.buffer_name else b.id == request.buffer_id)), None
    )
    offers = list(found.offer_types) if found else []
    rows = [_offer_label(offer) for offer in found.offers] if found and found.offers else offers
    matrix = trace_matrix(rows, accept or ["memfd"], answer.trace)
    if args.json:
        print(
            json.dumps(
                _result(args, accept, found, offers, answer.map_type or None, answer.error or None, None, answer.trace)
                | {"matrix": _matrix_json(matrix)},
                indent=2,
            )
        )
        return 0 if answer.map_type else 1
    label = f"buffer {found.id} ({found.name})" if found and found.name else f"buffer {args.buffer}"
    print(
        f"{label}: offers [{', '.join(offers)}]; accept [{', '.join(accept) or 'compat: memfd'}], access {args.access}"
    )
    print(format_trace_matrix(matrix))
    if answer.map_type:
        print(f"an attach would negotiate {answer.map_type}")
        return 0
    print(f"an attach would fail: {answer.error}")
    return 1


def _could_not_ask(args: argparse.Namespace, accept: list[str], message: str, code: str) -> int:
    """Exit 2: the message on stderr, and with --json the JSON object on stdout too."""
    print(f"bufbroker explain: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps(_result(args, accept, None, [], None, message, code, []) | {"matrix": None}, indent=2))
    return 2


def _result(
    args: argparse.Namespace,
    accept: list[str],
    found: Any,
    offers: list[str],
    map_type: str | None,
    error: str | None,
    error_code: str | None,
    trace: Any,
) -> dict[str, Any]:
    from bufbroker_broker.cli.ls import buffer_json

    return {
        "buffer": buffer_json(found) if found is not None else None,
        "offers": offers,
        "accept": accept,
        "access": args.access,
        "would_attach": map_type is not None,
        "map_type": map_type,
        "error": error,
        "error_code": error_code,
        "trace": [
            {
                "offer_index": s.offer_index,
                "offer_type": s.offer_type,
                "match_index": s.match_index,
                "match_type": s.match_type,
                "verdict": s.verdict,
                "reason": s.reason,
                "converter": s.converter,
                "format": s.format,
            }
            for s in trace
        ],
    }


def _offer_label(offer: Any) -> str:
    """An offer as its type, then its (format, modifier) pairs after a slash, as --accept writes them."""
    from bufbroker import formats

    name = offer.WhichOneof("kind") or "unknown"
    if name == "plugin":
        name = offer.plugin.type_name
    pairs = "+".join(formats.pair_text(pair.format, pair.modifier) for pair in offer.formats)
    return f"{name}/{pairs}" if pairs else name


def _matrix_json(matrix: Any) -> dict[str, Any]:
    """The trace matrix as the HTTP API's ExplainResult shows it."""
    return {
        "offers": list(matrix.offers),
        "matches": list(matrix.matches),
        "cells": [
            [{"verdict": v, "reason": r, "converter": c, "format": f} for v, r, c, f in row] for row in matrix.cells
        ],
        "chosen": {"offer_index": matrix.chosen[0], "match_index": matrix.chosen[1]} if matrix.chosen else None,
    }


def format_trace_matrix(matrix: Any) -> str:
    """Offers (rows) x matches (columns) as a text table, then each reason."""
    heads = [f"match {j}: {name}" for j, name in enumerate(matrix.matches)]
    rows = [f"offer {i}: {name}" for i, name in enumerate(matrix.offers)]
    cells = [
        [
            ("* " if matrix.chosen == (i, j) else "")
            + verdict
            + (f" via {converter}" if converter else "")
            + (f" {chosen}" if chosen else "")
            for j, (verdict, _, converter, chosen) in enumerate(row)
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
        for j, (verdict, reason, _, _) in enumerate(row)
        if reason
    ]
    if reasons:
        lines += ["reasons:", *reasons]
    return "\n".join(lines)
