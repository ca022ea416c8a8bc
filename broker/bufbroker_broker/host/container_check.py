"""`bufbroker doctor` inside a container: the engine, the socket dir, the uid, the fd limit.

What goes wrong when the broker or a client runs in a container is rarely
the kernel (the host's checks cover that) but what the engine gave the
process: a bind-mounted socket dir that keeps the host's owner and mode, a
uid that is not in the dir's group, an ``nofile`` limit lowered by
``--ulimit``. Each check says what it found and, when it is not ok, the
flag or manifest field that fixes it.
"""

from __future__ import annotations

import os
import resource
import stat
from collections.abc import Mapping
from pathlib import Path

from bufbroker_broker.host.capabilities import FD_LIMIT_WANTED, Check

BROKER_UID = 10001  # the image's user and group (deploy/docker/Dockerfile)

# Words in /proc/1/cgroup that only container engines and kubelets write.
CGROUP_HINTS = ("docker", "libpod", "kubepods", "containerd", "crio", "lxc")


def container_engine(root: Path = Path("/"), environ: Mapping[str, str] | None = None) -> str | None:
    """The engine this process runs under ("podman", "docker", ...), or None on a plain host.

    podman writes /run/.containerenv and sets ``container=podman``; Docker
    writes /.dockerenv; Kubernetes runtimes (containerd, CRI-O) write
    neither, so the cgroup path of pid 1 is the last hint (cgroup v1 and
    hybrid hosts name it; a cgroup v2 namespace may hide it).
    """
    environ = os.environ if environ is None else environ
    if (root / "run/.containerenv").exists():
        return "podman"
    if (root / ".dockerenv").exists():
        return "docker"
    if environ.get("container"):
        return environ["container"]
    try:
        cgroups = (root / "proc/1/cgroup").read_text()
    except OSError:
        return None
    for hint in CGROUP_HINTS:
        if hint in cgroups:
            return "kubernetes" if hint == "kubepods" else hint
    return None


def check_container(engine: str | None) -> Check:
    if engine is None:
        return Check("container", True, "not in a container (no /run/.containerenv, /.dockerenv or cgroup hint)")
    return Check("container", True, f"in a container ({engine})")


def check_uid(uid: int, engine: str | None) -> Check:
    detail = f"uid {uid}, gid {os.getegid()}, groups {sorted(os.getgroups())}"
    if uid == 0 and engine is not None:
        fix = (
            f"run as the image's user {BROKER_UID} (the image's USER, or --user {BROKER_UID}:{BROKER_UID}; "
            f"Kubernetes: runAsUser: {BROKER_UID}): the broker needs no root"
        )
        return Check("uid", False, detail + " (root in a container)", fix)
    return Check("uid", True, detail)


def check_socket_dir(socket_dir: Path, uid: int, groups: set[int]) -> Check:
    """Whether this uid can use ``socket_dir`` (create the broker's sockets there, or connect to them)."""
    name = "socket dir"
    try:
        info = socket_dir.stat()
    except FileNotFoundError:
        fix = (
            f"mount the socket-dir volume at {socket_dir} (-v bufbroker-sock:{socket_dir}; Kubernetes: an "
            f"emptyDir or hostPath at mountPath {socket_dir}), or set BUFBROKER_SOCKET_DIR to where it is mounted"
        )
        return Check(name, False, f"{socket_dir} does not exist", fix)
    except OSError as error:
        return Check(name, False, f"{socket_dir}: {error.strerror}", f"give uid {uid} search access to its parents")
    mode = stat.S_IMODE(info.st_mode)
    detail = f"{socket_dir} owner {info.st_uid}:{info.st_gid} mode {mode:04o}"
    if not stat.S_ISDIR(info.st_mode):
        return Check(name, False, detail + " is not a directory", f"remove {socket_dir} and mount a directory there")
    if uid == info.st_uid:
        usable = mode & 0o300 == 0o300
    elif info.st_gid in groups:
        usable = mode & 0o030 == 0o030
    else:
        usable = mode & 0o003 == 0o003
    if not usable:
        fix = (
            f"uid {uid} cannot create or reach sockets there: on the host, chown {info.st_uid}:{info.st_gid} is "
            f"kept by a bind mount, so `chown {BROKER_UID}:{BROKER_UID} DIR && chmod 0770 DIR` it before mounting; "
            f"a client joins the dir's group (--group-add {info.st_gid}; Kubernetes: supplementalGroups: "
            f"[{info.st_gid}] or fsGroup for an emptyDir)"
        )
        return Check(name, False, detail, fix)
    if mode & 0o002:
        fix = f"chmod 0770 {socket_dir}: any uid that sees the dir could replace the broker's sockets"
        return Check(name, False, detail + " (writable by every uid)", fix)
    return Check(name, True, detail)


def check_container_fd_limit(limits: tuple[int, int]) -> Check:
    """RLIMIT_NOFILE as the engine set it: the broker raises soft to hard, never past hard."""
    soft, hard = limits
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    detail = f"soft {soft}, hard {hard_text} (the broker wants a hard limit of at least {FD_LIMIT_WANTED})"
    if hard != resource.RLIM_INFINITY and hard < FD_LIMIT_WANTED:
        fix = (
            f"--ulimit nofile={FD_LIMIT_WANTED * 16}:{FD_LIMIT_WANTED * 16} (podman/docker run); without "
            "CAP_SYS_RESOURCE the engine cannot give more than its own hard limit (`ulimit -Hn` where the "
            "engine runs; LimitNOFILE= of containerd or CRI-O under Kubernetes): raise that first"
        )
        return Check("fd limit", False, detail, fix)
    return Check("fd limit", True, detail)


def container_checks(
    socket_dir: Path,
    root: Path = Path("/"),
    environ: Mapping[str, str] | None = None,
) -> list[Check]:
    """The container case of `bufbroker doctor`, for this process.

    On a plain host it is one ok check saying so (the host checks already
    cover the fd limit there). In a container it adds the uid, the socket
    dir (``socket_dir``: the caller's, $BUFBROKER_SOCKET_DIR or the
    broker's default, which the settings layer knows) and the fd limit the
    engine set. ``root`` and ``environ`` are for tests; the checks read
    the real uid and limits.
    """
    environ = os.environ if environ is None else environ
    engine = container_engine(root, environ)
    checks = [check_container(engine)]
    if engine is None:
        return checks
    uid = os.geteuid()
    checks.append(check_uid(uid, engine))
    checks.append(check_socket_dir(socket_dir, uid, {os.getegid(), *os.getgroups()}))
    checks.append(check_container_fd_limit(resource.getrlimit(resource.RLIMIT_NOFILE)))
    return checks
