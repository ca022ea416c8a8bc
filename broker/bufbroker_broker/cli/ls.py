"""`bufbroker ls`: the broker's buffers, one line each, or one JSON document with --json."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bufbroker_broker.cli._args import add_socket_dir

BUFFER_FIELDS = """\
JSON (--json): one list, in id order, one object per buffer, with the fields of
the HTTP API's Buffer:
  id, name, size (bytes), labels {key: value}, layout (null or {fourcc, width,
  height, modifier, planes: [{offset, stride}]}), offer_types [names, exporter
  order], offers [{type, options, restricted_to}], exporter_pid, exporter_uid,
  exporter_session_id, exporter_gone, on_exporter_exit ("revoke" | "keep"),
  allow [principals], state ("active" | "revoked"), generation,
  attachment_count, pinned, fd_count.
On an error nothing goes to stdout: the message goes to stderr and ls exits 1.
"""


def label_filter(text: str) -> tuple[str, str]:
    """``key=value`` for --label: the key must not be empty; the value may be."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ls = commands.add_parser(
        "ls",
        help="list registered buffers",
        description="List the broker's buffers (those this uid may see), as a table or as JSON.",
        epilog=BUFFER_FIELDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_socket_dir(ls)
    ls.add_argument("--json", action="store_true", help="print one JSON document (a list of buffers) instead")
    ls.add_argument("--name", default=None, metavar="NAME", help="only the buffer named NAME")
    ls.add_argument(
        "--label",
        dest="labels",
        action="append",
        type=label_filter,
        default=[],
        metavar="KEY=VALUE",
        help="only buffers with this label (repeatable: every one must match)",
    )


def list_buffers(session: Any, name: str = "") -> list[Any]:
    """Every visible buffer (or the one named ``name``), paging through ListBuffers at its default page size."""
    from bufbroker.v1 import broker_pb2 as pb

    found: list[Any] = []
    after = 0
    while True:
        page = session.call("ListBuffers", pb.ListBuffersRequest(name=name, after_id=after))
        found.extend(page.buffers)
        if not page.next_after_id:
            return found
        after = page.next_after_id


def matches(info: Any, name: str | None, labels: list[tuple[str, str]]) -> bool:
    if name is not None and info.name != name:
        return False
    return all(key in info.labels and info.labels[key] == value for key, value in labels)


def offer_json(offer: Any) -> dict[str, Any]:
    """An offer as the HTTP API shows it; a plugin's options stay {} (this client loads no plugins)."""
    from google.protobuf.json_format import MessageToDict

    arm = offer.WhichOneof("kind")
    restricted = list(offer.restricted_to)
    if arm is None:
        return {"type": "unknown", "options": {}, "restricted_to": restricted}
    if arm == "plugin":
        return {"type": offer.plugin.type_name, "options": {}, "restricted_to": restricted}
    options = MessageToDict(getattr(offer, arm), preserving_proto_field_name=True)
    return {"type": arm, "options": options, "restricted_to": restricted}


def buffer_json(info: Any) -> dict[str, Any]:
    """A BufferInfo as a JSON object: the field names of the HTTP API's Buffer."""
    from bufbroker.v1 import broker_pb2 as pb

    layout = None
    if info.HasField("layout"):
        layout = {
            "fourcc": info.layout.fourcc,
            "width": info.layout.width,
            "height": info.layout.height,
            "modifier": info.layout.modifier,
            "planes": [{"offset": p.offset, "stride": p.stride} for p in info.layout.planes],
        }
    return {
        "id": info.id,
        "name": info.name,
        "size": info.size,
        "labels": dict(info.labels),
        "layout": layout,
        "offer_types": list(info.offer_types),
        "offers": [offer_json(o) for o in info.offers],
        "exporter_pid": info.exporter_pid,
        "exporter_uid": info.exporter_uid,
        "exporter_session_id": info.exporter_session_id,
        "exporter_gone": info.exporter_gone,
        "on_exporter_exit": "keep" if info.on_exporter_exit == pb.EXPORTER_EXIT_POLICY_KEEP else "revoke",
        "allow": list(info.allow),
        "state": "active" if info.state == pb.BUFFER_STATE_ACTIVE else "revoked",
        "generation": info.generation,
        "attachment_count": info.attachment_count,
        "pinned": bool(info.pinned_by),
        "fd_count": info.fd_count,
    }


def run(args: argparse.Namespace) -> int:
    import bufbroker
    from bufbroker.v1 import broker_pb2 as pb

    try:
        with bufbroker.connect(args.socket_dir) as session:
            buffers = [b for b in list_buffers(session, args.name or "") if matches(b, args.name, args.labels)]
    except bufbroker.BrokerError as error:
        print(f"bufbroker ls: {error.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([buffer_json(b) for b in buffers], indent=2))
        return 0
    print(f"{'ID':>6}  {'NAME':<24} {'PID':>7} {'SIZE':>12}  {'STATE':<8} {'OFFERS':<20} {'ATTACHMENTS':>11}")
    for b in buffers:
        state = "active" if b.state == pb.BUFFER_STATE_ACTIVE else "revoked"
        print(
            f"{b.id:>6}  {b.name or '-':<24} {b.exporter_pid:>7} {b.size:>12}  {state:<8} "
            f"{','.join(b.offer_types):<20} {b.attachment_count:>11}"
        )
    if not buffers:
        print("(no buffers registered)" if args.name is None and not args.labels else "(no buffers match)")
    return 0
