"""`bufbroker top`: a live terminal view of the broker, like pw-top.

Each refresh is four gRPC introspection calls (GetStats, ListSessions,
ListAttachments, ListStreams) plus ListBuffers, drawn with rich, or
(``--json``) printed as one JSON object per refresh. Rates are the change of
the broker's fd counters between two refreshes; a stream consumer's fps is
the change of its delivered count between two of its producer's reports
(cli/ls.py link_rates), unless the producer reports it.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import stream_pb2 as spb
from bufbroker_broker.cli.ls import (
    buffer_json,
    consumer_fps,
    drops,
    link_rates,
    list_buffers,
    list_streams,
    stream_json,
    who,
)

RATE_FIELDS = ("fds_sent", "fds_received", "fds_closed")


@dataclass
class Sample:
    at: float
    stats: pb.GetStatsResponse
    sessions: list
    buffers: list
    attachments: list
    streams: list = field(default_factory=list)
    link_fps: dict[int, float] = field(default_factory=dict)  # measured, per link id (see link_rates)

    @property
    def names(self) -> dict[int, str]:
        """Session id -> the name it gave itself."""
        return {s.id: s.name for s in self.sessions if s.name}


def take_sample(session: Any, before: Sample | None = None) -> Sample:
    sample = Sample(
        at=time.monotonic(),
        stats=session.stats(),
        sessions=list(session.call("ListSessions", pb.ListSessionsRequest()).sessions),
        buffers=list_buffers(session),
        attachments=list(session.call("ListAttachments", pb.ListAttachmentsRequest()).attachments),
        streams=list_streams(session),
    )
    if before is not None:
        sample.link_fps = link_rates(before.streams, before.at, sample.streams, sample.at, before.link_fps)
    return sample


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
    """One frame: a summary line, the sessions, buffers and streams tables."""
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
    left = ("NAME", "ROLE", "EVENTS", "COMPLIANT")
    columns = ("ID", "PID", "NAME", "UID", "GID", "ROLE", "BUFFERS", "ATTACH", "MAPS", "FDS", "EVENTS", "COMPLIANT")
    for column in columns:
        sessions.add_column(column, no_wrap=True, justify="left" if column in left else "right")
    for info in now.sessions:
        role = info.role + (" (this top)" if info.id == own_session_id else "")
        sessions.add_row(
            str(info.id),
            str(info.pid),
            info.name or "-",
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
    names = now.names
    importers = defaultdict(list)
    for attachment in now.attachments:
        name = names.get(attachment.session_id, "")
        importers[attachment.buffer_id].append(
            f"{attachment.importer_pid}:{attachment.map_type}" + (f" ({name})" if name else "")
        )
    buffers = Table(title="buffers", title_justify="left", expand=True)
    for column in ("ID", "NAME", "EXPORTER", "SIZE", "STATE", "OFFERS", "GEN", "IMPORTERS (pid:type)"):
        buffers.add_column(column, no_wrap=column not in ("IMPORTERS (pid:type)",), overflow="fold")
    for info in now.buffers:
        state = "active" if info.state == pb.BUFFER_STATE_ACTIVE else "revoked"
        buffers.add_row(
            str(info.id),
            info.name or "-",
            who(info.exporter_pid, names.get(info.exporter_session_id, "")) + (" (gone)" if info.exporter_gone else ""),
            _size(info.size),
            Text(state, style="red" if state == "revoked" else ""),
            ",".join(info.offer_types),
            str(info.generation),
            ", ".join(importers.get(info.id, [])) or "-",
        )
    if not now.buffers:
        buffers.add_row("-", "(no buffers registered)", "", "", "", "", "", "")
    if not now.streams:
        return Group(summary, sessions, buffers)
    return Group(summary, sessions, buffers, streams_table(now))


def streams_table(now: Sample) -> Table:
    """A row per stream (its producer, slots, fps), a row per consumer below it; stalled ones in red."""
    table = Table(title="streams", title_justify="left", expand=True)
    for column in ("STREAM", "LINK", "PID (NAME)", "MODE", "FPS", "LAG", "HELD", "DROPS", "STALLED"):
        table.add_column(column, no_wrap=True, justify="right" if column in ("FPS", "LAG", "DROPS") else "left")
    for s in now.streams:
        policy = "report" if s.on_stall == pb.STALL_POLICY_REPORT else "reclaim"
        table.add_row(
            Text(s.name, style="bold"),
            "producer",
            who(s.producer_pid, s.producer_name),
            f"{len(s.slot_buffer_ids)} slots",
            f"{s.producer.fps:.1f}" if s.HasField("producer") else "-",
            "",
            f"max {s.max_held}",
            "",
            f"{policy} after {s.stall_timeout:g} s",
        )
        for c in s.consumers:
            k = c.counters
            fps = consumer_fps(c, now.link_fps)
            stalled = Text(f"STALLED {k.longest_hold:.1f} s", style="bold red") if c.stalled else Text("no")
            table.add_row(
                "",
                f"#{c.link_id}",
                Text(who(c.pid, c.name), style="red" if c.stalled else ""),
                "latest" if c.mode == spb.CONSUMER_MODE_LATEST else "queue",
                f"{fps:.1f}" if fps is not None else "-",
                str(k.lag),
                f"{k.held_now}/{c.max_held} {k.longest_hold:.1f}s",
                str(drops(k)),
                stalled,
            )
    return table


def snapshot(now: Sample, before: Sample, own_session_id: int) -> dict[str, Any]:
    """One refresh as a JSON object: what the table shows, numbers left as numbers, rates since ``before``."""
    s = now.stats
    seconds = max(now.at - before.at, 1e-6)
    rates = {field: (getattr(s, field) - getattr(before.stats, field)) / seconds for field in RATE_FIELDS}
    names = now.names
    importers = defaultdict(list)
    for a in now.attachments:
        importers[a.buffer_id].append(
            {
                "attachment_id": a.id,
                "session_id": a.session_id,
                "pid": a.importer_pid,
                "name": names.get(a.session_id, ""),
                "map_type": a.map_type,
            }
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
                "name": info.name,
                "this_top": info.id == own_session_id,
            }
            for info in now.sessions
        ],
        "buffers": [{**buffer_json(info, names), "importers": importers.get(info.id, [])} for info in now.buffers],
        "attachments": [
            {
                "id": a.id,
                "buffer_id": a.buffer_id,
                "session_id": a.session_id,
                "importer_pid": a.importer_pid,
                "importer_name": names.get(a.session_id, ""),
                "map_type": a.map_type,
                "pinned": a.pinned,
                "mappings": a.mappings,
                "non_compliant": a.non_compliant,
            }
            for a in now.attachments
        ],
        "streams": [stream_json(info, now.link_fps) for info in now.streams],
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
        now = take_sample(session, before)
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
        console.print(render(take_sample(session, before), before, session.id))
        return
    done = 0
    with Live(render(before, None, session.id), console=console, auto_refresh=False) as live:
        while not iterations or done < iterations:
            time.sleep(interval)
            now = take_sample(session, before)
            live.update(render(now, before, session.id), refresh=True)
            before = now
            done += 1
