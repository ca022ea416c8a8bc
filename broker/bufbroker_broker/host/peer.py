"""A connected peer's supplementary groups: SO_PEERGROUPS, else /proc/PID/status.

SO_PEERCRED gives only the primary gid; a ``gid:N`` principal must also match
the groups the peer's process holds. SO_PEERGROUPS (Linux >= 4.13) reports
them as the kernel saw them at connect; the ``Groups:`` line of
/proc/PID/status is the fallback (racy against a pid reused, so second best).
"""

from __future__ import annotations

import array
import errno
import socket

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
# NGROUPS_MAX is 65536; ask for this many at first, more if the kernel says so (ERANGE).
FIRST_TRY = 256
MAX_GROUPS = 65536


def peer_groups(sock: socket.socket, pid: int) -> tuple[int, ...]:
    """The supplementary gids of ``sock``'s peer; () when neither source says."""
    size = FIRST_TRY
    gid_size = array.array("I").itemsize
    while size <= MAX_GROUPS:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size * gid_size)
        except OSError as error:
            if error.errno == errno.ERANGE and size < MAX_GROUPS:  # more groups than room
                size *= 4
                continue
            break
        gids = array.array("I")
        gids.frombytes(raw[: len(raw) - len(raw) % gid_size])
        return tuple(gids)
    return _proc_groups(pid)


def _proc_groups(pid: int) -> tuple[int, ...]:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return tuple(int(gid) for gid in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()
