"""`bufbroker doctor`: what this host supports, and what to do about each missing piece.

The same probes as the broker's start-up capability line
(host/capabilities.py), on the same host facts the broker probes at start
(host/probe.py), then each mapping type's own verdict on those facts
(``host_support``), as the broker would list them.

Exit status: 0 when every piece is there, 1 when the broker runs but some
optional piece is missing (it serves fewer mapping types), 2 when a
required piece is missing and the broker cannot work here.

Then the extras, which the exit status leaves out (the broker needs none
of them): the container case (host/container_check.py: uid, socket dir,
fd limit inside a container) and whether the GStreamer elements load
(host/gstreamer_check.py).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bufbroker_broker import mapping_types
from bufbroker_broker.host.capabilities import Check, HostPaths, probe_host
from bufbroker_broker.host.container_check import container_checks
from bufbroker_broker.host.gstreamer_check import gstreamer_checks
from bufbroker_broker.host.probe import probe_host_facts
from bufbroker_broker.server.settings import default_socket_dir

OK, PARTIAL, BROKEN = 0, 1, 2


def doctor_report(paths: HostPaths | None = None, extras: bool | None = None) -> tuple[list[str], int]:
    """The report's lines and the exit status (see the module docstring), for ``paths`` (default: this host's).

    ``extras`` (default: only for this host's paths) adds the container
    and GStreamer checks, which probe this process and host, not ``paths``.
    """
    extras = paths is None if extras is None else extras
    paths = paths if paths is not None else HostPaths()
    host = probe_host_facts(paths.sysfs, paths.dev)
    checks = probe_host(paths, host)
    lines = [f"bufbroker doctor: kernel {os.uname().release}, uid {os.geteuid()}"]
    for check in checks:
        lines.extend(_check_lines(check))
    lines.append("mapping types:")
    for name, mapping_type in sorted(mapping_types.load_mapping_types().items()):
        supported, reason = mapping_types.host_support(mapping_type, host)
        verdict = "yes" if supported else "no"
        lines.append(f"  {name:<10} {verdict:<4} {reason}".rstrip())
    if extras:
        lines.append("extras (the broker needs none of them; the result leaves them out):")
        socket_dir = Path(os.environ.get("BUFBROKER_SOCKET_DIR") or default_socket_dir())
        for check in [*container_checks(socket_dir), *gstreamer_checks()]:
            lines.extend(_check_lines(check))
    missing_required = [c.name for c in checks if c.required and not c.ok]
    missing_optional = [c.name for c in checks if not c.required and not c.ok]
    if missing_required:
        lines.append(f"result: the broker cannot work here: {', '.join(missing_required)} missing")
        return lines, BROKEN
    if missing_optional:
        lines.append(f"result: the broker runs here without: {', '.join(missing_optional)} (see the fixes above)")
        return lines, PARTIAL
    lines.append("result: everything bufbroker can use is here")
    return lines, OK


def _check_lines(check: Check) -> list[str]:
    state = "ok" if check.ok else ("MISSING" if check.required else "missing")
    lines = [f"  {state:<8} {check.name:<14} {check.detail}"]
    if not check.ok and check.fix:
        lines.append(f"  {'':<8} {'':<14} fix: {check.fix}")
    return lines


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    commands.add_parser(
        "doctor",
        help="what this host's kernel supports, and what to do about each missing piece",
        description="Probe memfd sealing, the fd limit, /dev/udmabuf, dma-heaps and the PCI topology, then "
        "each mapping type's verdict, printing a fix for whatever is missing. Exit 0 when everything is "
        "there, 1 when an optional piece is missing, 2 when the broker cannot work here.",
    )


def run(args: argparse.Namespace) -> int:
    return run_doctor()


def run_doctor() -> int:
    """Print the report for this host (honouring BUFBROKER_SYSFS_ROOT); return the status."""
    sysfs = os.environ.get("BUFBROKER_SYSFS_ROOT") or "/sys"
    lines, status = doctor_report(HostPaths(sysfs=sysfs), extras=True)
    print("\n".join(lines))
    return status
