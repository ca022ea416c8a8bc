"""An export grants importers read access unless its exporter grants write.

The default lives in the broker (mapping_types/_access.py: an offer with
an unspecified ``max_access`` offers read), so it holds for every client:
the SDK's names and default specs, a registration with no offers (the
compat memfd offer), and a raw gRPC client that leaves access unset.
Write is granted by ``export(..., allow_write=True)`` or an explicit
``Memfd(access="read_write")``; a refused read_write attach says why and
what the exporter must do, and so does ``bufbroker explain``.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import subprocess
import sys

import pytest

import bufbroker
from bufbroker.v1 import mapping_types_pb2 as mt
from tests.raw_client import RawClient

DEFAULT_REASON = "the exporter offers memfd read-only (the default)"
HOW_TO_ALLOW = "allow_write=True or Memfd(access='read_write')"


def read_only_fd(fd: int) -> bool:
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY


def assert_refused_read_write(session: bufbroker.Session, buffer: int | str, accept=("memfd",)) -> str:
    """A read_write attach is refused with the trace; returns the (first) reason."""
    with pytest.raises(bufbroker.NoCommonMappingType) as raised:
        session.attach(buffer, accept=list(accept) or None, access="read_write")
    trace = raised.value.trace
    assert trace and trace[0].verdict == "soft-mismatch", trace
    assert session.stats().attachments == 0
    return trace[0].reason


def test_a_read_importer_of_a_default_export_gets_a_read_only_fd(broker):
    with broker.connect() as exp, broker.connect() as imp:
        exported = exp.export(4096, name="frames")
        exported.memoryview()[:5] = b"frame"
        attachment = imp.attach("frames", accept=["memfd"], access="read")
        with attachment.map() as mapping:
            assert not mapping.writable and mapping.handle.memfd.access == mt.ACCESS_READ
            assert read_only_fd(mapping.fds[0])
            assert bytes(mapping.memoryview()[:5]) == b"frame"
            with pytest.raises(PermissionError):
                mmap.mmap(mapping.fds[0], 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        attachment.detach()


@pytest.mark.parametrize(
    "offers, accept",
    [
        (None, ("memfd",)),  # the SDK's default offers
        (None, ()),  # ... to a compat importer
        (["memfd"], ("memfd",)),  # a name
        ([bufbroker.Memfd()], ("memfd",)),  # a spec without an access
    ],
)
def test_a_read_write_importer_of_a_default_export_is_refused_with_the_reason_naming_allow_write(
    broker, offers, accept
):
    with broker.connect() as exp, broker.connect() as imp:
        exp.export(4096, name="frames", offers=offers)
        reason = assert_refused_read_write(imp, "frames", accept)
        assert reason.startswith("access: importer wants read_write")
        assert DEFAULT_REASON in reason and HOW_TO_ALLOW in reason


def test_a_default_segments_offer_is_read_only_too_and_names_its_own_spec(broker):
    with broker.connect() as exp, broker.connect() as imp:
        exp.export(4096, name="pool", offers=["segments"])
        reason = assert_refused_read_write(imp, "pool", ("segments",))
        assert "the exporter offers segments read-only (the default)" in reason
        assert "allow_write=True or Segments(access='read_write')" in reason


def test_allow_write_grants_read_write_and_the_exporter_sees_the_importers_writes(broker):
    with broker.connect() as exp, broker.connect() as imp:
        exported = exp.export(4096, name="frames", allow_write=True)
        for accept in (["memfd"], None):  # a dynamic and a compat importer
            attachment = imp.attach("frames", accept=accept, access="read_write")
            assert [s.verdict for s in attachment.trace] == ["matched"]
            with attachment.map() as mapping:
                assert mapping.writable and not read_only_fd(mapping.fds[0])
                mapping.memoryview()[:6] = b"answer"
            assert bytes(exported.memoryview()[:6]) == b"answer"
            exported.memoryview()[:6] = b"\0" * 6
            attachment.detach()


def test_allow_write_keeps_an_explicit_read_offer_read_only(broker):
    with broker.connect() as exp, broker.connect() as imp:
        exp.export(4096, name="mixed", offers=[bufbroker.Memfd(access="read"), "segments"], allow_write=True)
        attachment = imp.attach("mixed", accept=["memfd", "segments"], access="read_write")
        assert attachment.map_type == "segments"
        assert "the offer allows read only" in attachment.trace[0].reason
        attachment.detach()


def test_an_explicit_read_write_memfd_offer_grants_read_write(broker):
    with broker.connect() as exp, broker.connect() as imp:
        exp.export(4096, name="frames", offers=[bufbroker.Memfd(access="read_write")])
        attachment = imp.attach("frames", accept=["memfd"], access="read_write")
        with attachment.map() as mapping:
            assert mapping.writable and mapping.handle.memfd.access == mt.ACCESS_READ_WRITE
        attachment.detach()


@pytest.mark.parametrize("offers", [[mt.Offer(memfd=mt.MemfdOffer())], []], ids=["unspecified-access", "no-offers"])
def test_a_raw_grpc_exporter_that_leaves_access_unset_offers_read_only(broker, offers):
    fd = os.memfd_create("raw-export", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(fd, 4096)
    with RawClient(broker.socket_dir) as raw, broker.connect() as imp:
        raw.send_fds("raw", [fd])
        os.close(fd)
        raw.register("raw", 4096, name="raw", offers=offers)
        reason = assert_refused_read_write(imp, "raw")
        assert DEFAULT_REASON in reason and HOW_TO_ALLOW in reason
        reader = imp.attach("raw", accept=["memfd"], access="read")
        with reader.map() as mapping:
            assert not mapping.writable and read_only_fd(mapping.fds[0])
        reader.detach()


def test_a_raw_grpc_exporter_grants_write_with_max_access_read_write(broker):
    fd = os.memfd_create("raw-writable", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(fd, 4096)
    with RawClient(broker.socket_dir) as raw, broker.connect() as imp:
        raw.send_fds("rw", [fd])
        os.close(fd)
        writable = mt.Offer(memfd=mt.MemfdOffer(max_access=mt.ACCESS_READ_WRITE))
        raw.register("rw", 4096, name="raw-rw", offers=[writable])
        writer = imp.attach("raw-rw", accept=["memfd"], access="read_write")
        assert [s.verdict for s in writer.trace] == ["matched"]
        writer.detach()


def test_explain_shows_why_a_read_write_attach_would_be_refused(broker):
    with broker.connect() as exp, broker.connect() as imp:
        exp.export(4096, name="frames")
        exp.export(4096, name="writable", allow_write=True)
        explained = imp.explain("frames", accept=["memfd"], access="read_write")
        assert explained.map_type == "" and "no common mapping type" in explained.error
        assert DEFAULT_REASON in explained.trace[0].reason and HOW_TO_ALLOW in explained.trace[0].reason
        assert imp.explain("writable", accept=["memfd"], access="read_write").map_type == "memfd"

        def cli(name: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bufbroker_broker",
                    "explain",
                    name,
                    "--accept",
                    "memfd",
                    "--access",
                    "read_write",
                    "--socket-dir",
                    str(broker.socket_dir),
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )

        refused = cli("frames")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "offer 0 x match 0: soft-mismatch: access: importer wants read_write" in refused.stdout
        assert DEFAULT_REASON in refused.stdout and HOW_TO_ALLOW in refused.stdout
        granted = cli("writable")
        assert granted.returncode == 0 and granted.stdout.splitlines()[-1] == "an attach would negotiate memfd"
