"""A real importer process for tests.

    python -m tests.clients.importer DIR BUFFER [--accept segments,memfd] [--access read]

Attaches, maps, reads every byte and prints one JSON line: the negotiated
type, the trace, the bytes read (as text, first 64), their length, whether
a writable shared mmap of each received fd was refused, the fds' open
mode and, for dma-bufs, their exporter's name from fdinfo (a dma-buf is
read between DMA_BUF_IOCTL_SYNC START and END). On a broker error it
prints {"error": class name, "message": ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import mmap
import os

import bufbroker
import bufbroker.dmabuf


def drop_privileges(uid: int) -> None:
    """Become ``uid`` (group 0 kept, for the 0770 socket dir), as a real other user.

    Everything this process needs is imported before, because the
    interpreter's own files may not be readable by that uid.
    """
    import encodings.idna  # noqa: F401

    import bufbroker.attachment
    import bufbroker.buffers  # noqa: F401

    os.setgroups([])
    os.setgid(0)
    os.setuid(uid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket_dir")
    parser.add_argument("buffer")
    parser.add_argument("--accept", default="")
    parser.add_argument("--access", default="read")
    parser.add_argument("--as-uid", type=int, default=None, help="drop to this uid (keeping gid 0) before connecting")
    args = parser.parse_args()
    if args.as_uid is not None:
        drop_privileges(args.as_uid)
    accept = [bufbroker.specs.spec_from_text(a) for a in args.accept.split(",") if a]  # TYPE[:ACCESS][/PAIRS]
    target = int(args.buffer) if args.buffer.isdigit() else args.buffer
    with bufbroker.connect(args.socket_dir) as session:
        try:
            attachment = session.attach(target, accept=accept, access=args.access)
        except bufbroker.BrokerError as error:
            print(
                json.dumps(
                    {
                        "error": type(error).__name__,
                        "message": error.message,
                        "trace": [dataclasses.asdict(s) for s in error.trace],
                    }
                ),
                flush=True,
            )
            return
        with attachment.map() as mapping:
            if mapping.is_dmabuf:
                with mapping.cpu_access() as view:
                    data = bytes(view)
            else:
                data = b"".join(bytes(v) for v in mapping.views())
            exp_names = [bufbroker.dmabuf.fdinfo(fd).get("exp_name", "") for fd in mapping.fds]
            writable_refused = []
            modes = []
            for fd in mapping.fds:
                modes.append("rw" if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR else "r")
                try:
                    mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE).close()
                    writable_refused.append(False)
                except PermissionError:
                    writable_refused.append(True)
            result = {
                "map_type": attachment.map_type,
                "format": attachment.format,
                "pinned": attachment.pinned,
                "trace": [dataclasses.asdict(s) for s in attachment.trace],
                "head": data[:64].decode(errors="replace"),
                "length": len(data),
                "extents": len(mapping.extents),
                "writable_mmap_refused": writable_refused,
                "fd_modes": modes,
                "exp_names": exp_names,
            }
        attachment.detach()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
