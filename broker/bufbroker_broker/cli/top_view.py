"""`bufbroker top`: a live terminal view of the broker, like pw-top.

Each refresh is three gRPC introspection calls (GetStats, ListSessions,
ListAttachments) plus ListBuffers, drawn with rich, or (``--json``) printed
as one JSON object per refresh. Rates are the change of the broker's fd
counters between two refreshes.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bufbroker.v1 import broker_pb2 as pb
from bufbroker_broker.cli.ls import buffer_json, list_buffers

RATE_FIELDS = ("fds_sent", "fds_received", "fds_closed")


@dataclass
class Sample:
    at: float
    stats: pb.GetStatsResponse
    sessions: list
    buffers: list
    attachments: list


def take_sample(session: Any) -> Sample:
    return Sample(
        at=time.monotonic(),
        stats=session.stats(),
        sessions=list(session.call("ListSessions", pb.ListSessionsRequest()).sessions),
        buffers=list_buffers(session),
        attachments=list(session.call("ListAttachments", pb.ListAttachmentsRequest()).attachments),
    )


def _rate(now: Sample, before: Sample | None, field: str) -> str:
    if before is None:
        return "-"
    seconds = max(now.at - before.at, 1e-6)
    return f"{(getattr(now.stats, field) - getattr(before.stats, field)) / seconds:.1f}/s"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(now: Sample, before: Sample | None, own_session_id: int) -> Group:
    """One frame: a summary line, the sessions table, the buffers table."""
    s = now.stats
    summary = Text.assemble(
        ("bufbroker ", "bold"),
        f"{s.version} pid {s.pid}  ",
        (f"{s.sessions} sessions  {s.buffers} buffers  {s.attachments} attachments  {s.mappings} mappings  ", ""),
        (f"fds held {s.fds_held}  ", "bold"),
        f"sent {_rate(now, before, 'fds_sent')}  received {_rate(now, before, 'fds_received')}  "
        f"closed {_rate(now, before, 'fds_closed')}  expired {s.fds_expired}",
    )
    sessions = Table(title="sessions", title_justify="left", expand=True)
    for column in ("ID", "PID", "UID", "GID", "ROLE", "BUFFERS", "ATTACH", "MAPS", "FDS", "EVENTS", "COMPLIANT"):
        sessions.add_column(
            column, no_wrap=True, justify="right" if column not in ("ROLE", "EVENTS", "COMPLIANT") else "left"
        )
    for info in now.sessions:
        role = info.role + (" (this top)" if info.id == own_session_id else "")
        sessions.add_row(
            str(info.id),
            str(info.pid),
            str(info.uid),
            str(info.gid),
            role,
            str(info.buffers),
            str(info.attachments),
            str(info.mappings),
            str(info.fds_held),
            "open" if info.events_open else "-",
            Text("no", style="bold red") if info.non_compliant else "yes",
        )
    importers = defaultdict(list)
    for attachment in now.attachments:
        importers[attachment.buffer_id].append(f"{attachment.importer_pid}:{attachment.map_type}")
    buffers = Table(title="buffers", title_justify="left", expand=True)
    for column in ("ID", "NAME", "EXPORTER", "SIZE", "STATE", "OFFERS", "GEN", "IMPORTERS (pid:type)"):
        buffers.add_column(column, no_wrap=column not in ("IMPORTERS (pid:type)",), overflow="fold")
    for info in now.buffers:
        state = "active" if info.state == pb.BUFFER_STATE_ACTIVE else "revoked"
        buffers.add_row(
            str(info.id),
            info.name or "-",
            str(info.exporter_pid) + (" (gone)" if info.exporter_gone else ""),
            _size(info.size),
            Text(state, style="red" if state == "revoked" else ""),
            ",".join(info.offer_types),
            str(info.generation),
            " ".join(importers.get(info.id, [])) or "-",
        )
    if not now.buffers:
        buffers.add_row("-", "(no buffers registered)", "", "", "", "", "", "")
    return Group(summary, sessions, buffers)


def snapshot(now: Sample, before: Sample, own_session_id: int) -> dict[str, Any]:
    """One refresh as a JSON object: what the table shows, numbers left as numbers, rates since ``before``."""
    s = now.stats
    seconds = max(now.at - before.at, 1e-6)
    rates = {field: (getattr(s, field) - getattr(before.stats, field)) / seconds for field in RATE_FIELDS}
    importers = defaultdict(list)
    for a in now.attachments:
        importers[a.buffer_id].append(
            {"attachment_id": a.id, "session_id": a.session_id, "pid": a.importer_pid, "map_type": a.map_type}
        )
    return {
        "broker": {"version": s.version, "pid": s.pid},
        "own_session_id": own_session_id,
        "stats": {
            "sessions": s.sessions,
            "buffers": s.buffers,
            "attachments": s.attachments,
            "mappings": s.mappings,
            "fds_held": s.fds_held,
            "fds_received": s.fds_received,
            "fds_sent": s.fds_sent,
            "fds_closed": s.fds_closed,
            "fds_expired": s.fds_expired,
        },
        "rates": {"seconds": seconds, **{f"{field}_per_second": rate for field, rate in rates.items()}},
        "sessions": [
            {
                "id": info.id,
                "pid": info.pid,
                "uid": info.uid,
                "gid": info.gid,
                "role": info.role,
                "buffers": info.buffers,
                "attachments": info.attachments,
                "mappings": info.mappings,
                "fds_held": info.fds_held,
                "non_compliant": info.non_compliant,
                "events_open": info.events_open,
                "this_top": info.id == own_session_id,
            }
            for info in now.sessions
        ],
        "buffers": [{**buffer_json(info), "importers": importers.get(info.id, [])} for info in now.buffers],
        "attachments": [
            {
                "id": a.id,
                "buffer_id": a.buffer_id,
                "session_id": a.session_id,
                "importer_pid": a.importer_pid,
                "map_type": a.map_type,
                "pinned": a.pinned,
                "mappings": a.mappings,
                "non_compliant": a.non_compliant,
            }
            for a in now.attachments
        ],
    }


def run_top_json(session: Any, interval: float, iterations: int = 0) -> None:
    """One JSON object per line, each ``interval`` after the one before; ``iterations`` > 0 stops after that many.

    Every line has rates: the first is measured over the first interval, so
    ``--once --json`` prints one line that ``--json`` alone would print first.
    """
    before = take_sample(session)
    done = 0
    while not iterations or done < iterations:
        time.sleep(interval)
        now = take_sample(session)
        sys.stdout.write(json.dumps(snapshot(now, before, session.id)) + "\n")
        sys.stdout.flush()
        before = now
        done += 1


def run_top_view(session: Any, interval: float, iterations: int = 0) -> None:
    """Refresh every ``interval`` seconds; ``iterations`` > 0 stops after that many frames.

    One iteration (``--once``) still takes two samples, ``interval`` apart,
    so its rates mean something; it prints the frame once, without live
    redrawing.
    """
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))
    before = take_sample(session)
    if iterations == 1:
        time.sleep(interval)
        console.print(render(take_sample(session), before, session.id))
        return
    done = 0
    with Live(render(before, None, session.id), console=console, auto_refresh=False) as live:
        while not iterations or done < iterations:
            time.sleep(interval)
            now = take_sample(session)
            live.update(render(now, before, session.id), refresh=True)
            before = now
            done += 1
