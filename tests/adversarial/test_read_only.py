"""Read-only that holds for every broker uid, and extents that are no access boundary.

A broker run as root and one run as its own uid (``User=bufbroker``, here
uid 64001 in a group its clients share) each serve an exporter of one uid
that passes its own memfd (``export(fd=...)``) and importers of another uid.
A memfd the non-root broker cannot make owner-writable (a fresh memfd is
0777 and not the broker's) is refused, saying what to do. Once registered,
a ``read`` importer of another uid cannot write the exporter's data or seal
it by any route (its fd, a reopen through /proc, the exporter's /proc
entry), and no importer, not even a ``read_write`` one, can add a seal
(the broker sets F_SEAL_SEAL): the exporter's own writable remap still
works afterwards. Extents of one memfd under different allow lists are
refused (an importer gets the whole memfd).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bufbroker
from tests.conftest import REPO_ROOT

CATEGORY = "privilege separation"
GROUP = 64000  # the socket dir's group: the broker's primary gid, a supplementary gid of every client
BROKER_UID = 64001
EXPORTER_UID = 64002
IMPORTER_UID = 64003
F_SEAL_FUTURE_WRITE = 0x0010
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the broker and clients as other uids")

DROP = """
import errno, fcntl, json, mmap, os, sys
import bufbroker, bufbroker.attachment, bufbroker.buffers, encodings.idna   # before the uid drop
os.setgroups([%(group)d]); os.setgid(%(group)d); os.setuid(%(uid)d)
"""

EXPORTER = (
    DROP
    + """
out = {}
fd = os.memfd_create('pool', os.MFD_ALLOW_SEALING)
os.ftruncate(fd, 8192)
os.pwrite(fd, b'intact', 0)
os.pwrite(fd, b'rwdata', 4096)
with bufbroker.connect(sys.argv[1], reconnect=False) as s:
    try:
        s.export(fd=fd, name='shared', offers=['memfd'], allow=['uid:%(importer)d'])
        out['fresh'] = 'registered'
    except bufbroker.BrokerError as error:
        out['fresh'] = type(error).__name__
        out['fresh_message'] = str(error)
    out['fresh_seals'] = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    out['mode'] = oct(os.fstat(fd).st_mode & 0o777)
    if out['fresh'] != 'registered':
        os.fchmod(fd, 0o644)  # what the refusal says to do
        s.export(fd=fd, name='shared', offers=['memfd'], allow=['uid:%(importer)d'])
    writable = os.memfd_create('writable', os.MFD_ALLOW_SEALING)
    os.ftruncate(writable, 4096)
    os.fchmod(writable, 0o644)
    os.pwrite(writable, b'rwdata', 0)
    s.export(fd=writable, name='writable', offers=['memfd'], allow=['uid:%(importer)d'], allow_write=True)
    out['pid'], out['fd'] = os.getpid(), fd
    print(json.dumps(out), flush=True)
    sys.stdin.readline()  # the importers have tried
    out = {'head': os.pread(fd, 6, 0).decode(errors='replace'), 'seals': fcntl.fcntl(fd, fcntl.F_GET_SEALS)}
    out['writable_seals'] = fcntl.fcntl(writable, fcntl.F_GET_SEALS)
    for key, f in (('remap', fd), ('remap_writable', writable)):
        try:
            view = mmap.mmap(f, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            view[6:10] = b'mine'
            view.close()
            out[key] = 'ok'
        except OSError as error:
            out[key] = error.strerror
print(json.dumps(out), flush=True)
"""
)

IMPORTER = (
    DROP
    + """
out = {}
exporter_pid, exporter_fd = int(sys.argv[2]), int(sys.argv[3])
def attempt(name, action):
    try:
        action()
        out[name] = 'allowed'
    except (OSError, ValueError, TypeError) as error:
        out[name] = type(error).__name__
def seal(fd, flag):
    return lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, flag)
def reopen_and(path, then):
    def run():
        f = os.open(path, os.O_RDWR)
        then(f)
    return run
with bufbroker.connect(sys.argv[1], reconnect=False) as s:
    a = s.attach('shared', accept=[bufbroker.Memfd(access='read')], map=True)
    fd = a.mapping.fds[0]
    out['head'] = bytes(a.mapping.memoryview()[:6]).decode()
    attempt('pwrite', lambda: os.pwrite(fd, b'EVIL', 0))
    attempt('mmap_write', lambda: mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))
    own = '/proc/self/fd/%%d' %% fd
    theirs = '/proc/%%d/fd/%%d' %% (exporter_pid, exporter_fd)
    attempt('reopen_rdwr_write', reopen_and(own, lambda f: os.pwrite(f, b'EVIL', 0)))
    attempt('exporter_proc_rdwr_write', reopen_and(theirs, lambda f: os.pwrite(f, b'EVIL', 0)))
    for name, flag in (('future_write', %(future_write)d), ('write', fcntl.F_SEAL_WRITE), ('shrink', fcntl.F_SEAL_SHRINK)):
        attempt('seal_' + name, seal(fd, flag))
        attempt('reopen_seal_' + name, reopen_and(own, lambda f, flag=flag: seal(f, flag)()))
        attempt('exporter_proc_seal_' + name, reopen_and(theirs, lambda f, flag=flag: seal(f, flag)()))
    w = s.attach('writable', accept=[bufbroker.Memfd(access='read_write')], map=True)
    wfd = w.mapping.fds[0]
    out['writable_head'] = bytes(w.mapping.memoryview()[:6]).decode()
    for name, flag in (('future_write', %(future_write)d), ('write', fcntl.F_SEAL_WRITE), ('shrink', fcntl.F_SEAL_SHRINK)):
        attempt('read_write_seal_' + name, seal(wfd, flag))
    a.mapping.close(); w.mapping.close()
print(json.dumps(out), flush=True)
"""
)

READ_ROUTES = ["pwrite", "mmap_write", "reopen_rdwr_write", "exporter_proc_rdwr_write"] + [
    f"{route}seal_{name}" for route in ("", "reopen_", "exporter_proc_") for name in ("future_write", "write", "shrink")
]
READ_WRITE_ROUTES = [f"read_write_seal_{name}" for name in ("future_write", "write", "shrink")]


def _start(broker_factory, base: Path, broker_user: str):
    """A broker as root or as BROKER_UID, its primary gid GROUP (so its sockets are the clients' group's)."""
    uid = 0 if broker_user == "root" else BROKER_UID
    socket_dir = base / "run"
    socket_dir.mkdir(mode=0o770)
    os.chown(socket_dir, uid, GROUP)
    prefix = ("setpriv", f"--reuid={uid}", f"--regid={GROUP}", "--clear-groups", "--")
    return broker_factory(base=base, prefix=prefix, env={"HOME": str(base)})


@ROOT_ONLY
@pytest.mark.parametrize("broker_user", ["root", "bufbroker"])
def test_another_uids_read_importer_cannot_write_or_seal_an_exporter_supplied_memfd(
    broker_user, open_base, broker_factory, reliability
):
    broker = _start(broker_factory, open_base, broker_user)
    with open(f"/proc/{broker.pid}/status") as status:
        broker_uid = int(next(line for line in status if line.startswith("Uid:")).split()[1])
    assert broker_uid == (0 if broker_user == "root" else BROKER_UID)
    exporter = broker.spawn_code(EXPORTER % {"group": GROUP, "uid": EXPORTER_UID, "importer": IMPORTER_UID})
    line = exporter.stdout.readline()
    assert line, f"the exporter exited with status {exporter.wait()}"
    first = json.loads(line)
    if broker_user == "root":
        assert first["fresh"] == "registered" and first["mode"] == "0o755", first  # root may fchmod any memfd: it did
    else:
        assert first["fresh"] == "InvalidArgument", first
        message = first["fresh_message"]
        assert "0777" in message and "fchmod(fd, 0o644)" in message and "export(size=...)" in message, message
        assert "run the broker as the exporter's uid or as root" in message, message
        assert first["fresh_seals"] == 0, "a refused memfd must come back unsealed"
    code = IMPORTER % {"group": GROUP, "uid": IMPORTER_UID, "future_write": F_SEAL_FUTURE_WRITE}
    importer = _spawn_with_args(broker, code, str(first["pid"]), str(first["fd"]))
    out, _ = importer.communicate(timeout=60)
    assert importer.returncode == 0, out
    tried = json.loads(out.strip().splitlines()[-1])
    exporter.stdin.write("go\n")
    exporter.stdin.flush()
    after, _ = exporter.communicate(timeout=30)
    assert exporter.returncode == 0, after
    after = json.loads(after.strip().splitlines()[-1])
    assert tried["head"] == "intact" and tried["writable_head"] == "rwdata"
    allowed = {route: tried[route] for route in READ_ROUTES + READ_WRITE_ROUTES if tried[route] == "allowed"}
    assert allowed == {}, f"an importer of uid {IMPORTER_UID} got through: {allowed}"
    assert after["head"] == "intact", after
    for key in ("seals", "writable_seals"):
        assert not after[key] & (F_SEAL_FUTURE_WRITE | 0x0008), after  # no write seal on either memfd
        assert after[key] & 0x0001, after  # F_SEAL_SEAL: nobody adds seals after the broker's
    assert after["remap"] == "ok" and after["remap_writable"] == "ok", after
    routes = len(READ_ROUTES) + len(READ_WRITE_ROUTES)
    reliability.record(
        CATEGORY,
        cases=routes + 1,
        faults=routes + (broker_user != "root"),
        bytes_lost=0,
        note=f"broker as {broker_user}: exporter-supplied 0777 memfd "
        + ("refused with what to do" if broker_user != "root" else "tightened to 0755")
        + f"; {len(READ_ROUTES)} write/seal routes of a read importer of another uid and "
        f"{len(READ_WRITE_ROUTES)} seals of a read_write importer refused; exporter's data intact, its writable remap works",
    )


def _spawn_with_args(broker, code: str, *args: str) -> subprocess.Popen:
    """Like ``broker.spawn_code``, with arguments after the socket dir."""
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(broker.socket_dir), *args],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    broker.clients.append(process)
    return process


def test_extents_of_one_memfd_under_different_allow_lists_are_refused(broker, reliability):
    page = os.sysconf("SC_PAGE_SIZE")
    pool = os.memfd_create("pool", os.MFD_ALLOW_SEALING)
    os.ftruncate(pool, 3 * page)
    try:
        with broker.connect() as session:

            def frame(index: int, allow: list[str]):
                extent = bufbroker.Extent(index * page, page)
                return session.export(
                    fd=pool, name=f"frame-{index}", offers=[bufbroker.Segments(extents=[extent])], allow=allow
                )

            a = frame(0, ["uid:1000"])
            with pytest.raises(bufbroker.FailedPrecondition) as refused:
                frame(1, ["uid:2000"])
            message = str(refused.value)
            assert f"buffer {a.id} (frame-0)" in message and "uid:1000" in message and "uid:2000" in message, message
            assert "same allow list" in message and "one memfd per access group" in message, message
            same = frame(2, ["uid:1000"])  # the same access group may share the pool
            assert same.id != a.id
    finally:
        os.close(pool)
    reliability.record(
        CATEGORY,
        cases=3,
        faults=1,
        note="extents of one pool memfd: a second allow list refused (FailedPrecondition naming the other buffer), the same one accepted",
    )
