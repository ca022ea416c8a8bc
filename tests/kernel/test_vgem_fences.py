"""Implicit fences as sync_files, with vgem: a real unsignalled dma_fence and no GPU.

Marked ``kernel``: the lane (tests/kernel/run_lane.py) loads vgem.ko and
its DRM dependencies; elsewhere these skip unless a vgem card exists. A
vgem dumb buffer exported as a dma-buf gets a write fence from
DRM_IOCTL_VGEM_FENCE_ATTACH that only DRM_IOCTL_VGEM_FENCE_SIGNAL signals
-- or the driver itself, 10 s after the attach (VGEM_FENCE_TIMEOUT). Every
wait on a pending fence here is well under that: "not yet" is checked for
0.2-0.5 s, a wait_fence gets 5 s, and the signal comes within ~1-3 s of the
attach even under TCG.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import time

import pytest

from bufbroker import dmabuf
from bufbroker.buffers import make_memfd
from tests.conftest import REPO_ROOT, json_line

pytestmark = pytest.mark.kernel


def readable(fd: int, timeout: float = 0.0) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def test_export_sync_file_is_pending_until_the_vgem_fence_signals(vgem_card):
    buffer = vgem_card.dumb_buffer(4096)
    assert dmabuf.is_dmabuf(buffer.fd) and buffer.size >= 4096

    # No fence yet: the kernel hands out a signalled stub, readable at once.
    idle = dmabuf.export_sync_file(buffer.fd, write=False)
    assert readable(idle)
    os.close(idle)

    fence = vgem_card.attach_fence(buffer.handle, write=True)
    attached = time.monotonic()
    for_readers = dmabuf.export_sync_file(buffer.fd, write=False)
    for_writers = dmabuf.export_sync_file(buffer.fd, write=True)
    try:
        assert dmabuf.is_sync_file(for_readers) and not dmabuf.is_sync_file(buffer.fd)
        assert not readable(for_readers, 0.3), "a reader's sync_file is readable with the write fence pending"
        assert not readable(for_writers), "a writer's sync_file is readable with the write fence pending"
        assert not readable(buffer.fd), "the dma-buf itself polls ready with its write fence pending"
        assert time.monotonic() - attached < 5, "too slow: vgem would have signalled the fence by itself"
        vgem_card.signal(fence)
        assert readable(for_readers, 1.0) and readable(for_writers, 1.0)
        signalled_at = time.monotonic()
        assert signalled_at - attached < 9, "the fence may have expired instead of being signalled"
        # Signalled (the same fence); a second signal is refused: it is no longer the card's to signal.
        with pytest.raises(OSError) as refused:
            vgem_card.signal(fence)
        assert refused.value.errno == errno.ENOENT
    finally:
        os.close(for_readers)
        os.close(for_writers)


def test_import_sync_file_adds_the_fence_to_another_dma_buf(vgem_card):
    source, target = vgem_card.dumb_buffer(4096), vgem_card.dumb_buffer(4096)
    fence = vgem_card.attach_fence(source.handle, write=True)
    pending = dmabuf.export_sync_file(source.fd, write=False)
    try:
        # As a read fence: writers of the target must wait, readers need not.
        dmabuf.import_sync_file(target.fd, pending, write=False)
        readers, writers = dmabuf.export_sync_file(target.fd, False), dmabuf.export_sync_file(target.fd, True)
        assert readable(readers) and not readable(writers)
        os.close(readers)
        # As a write fence: everyone waits.
        dmabuf.import_sync_file(target.fd, pending, write=True)
        readers = dmabuf.export_sync_file(target.fd, write=False)
        assert not readable(readers, 0.2)
        vgem_card.signal(fence)
        assert readable(readers, 1.0) and readable(writers, 1.0)
        os.close(readers)
        os.close(writers)

        # A fence fd that is not a sync_file: EINVAL, said plainly.
        memfd = make_memfd("not-a-fence", 4096)
        with pytest.raises(OSError, match="not a sync_file") as not_a_fence:
            dmabuf.import_sync_file(target.fd, memfd, write=True)
        assert not_a_fence.value.errno == errno.EINVAL
        os.close(memfd)
    finally:
        os.close(pending)


def test_export_sync_file_works_on_a_dma_heap_buffer_too(system_heap):
    fd = dmabuf.heap_alloc(4096, system_heap)
    try:
        sync_file = dmabuf.export_sync_file(fd, write=True)  # nothing pending: the signalled stub
        assert readable(sync_file)
        dmabuf.import_sync_file(fd, sync_file, write=True)  # a signalled fence: still nothing to wait for
        again = dmabuf.export_sync_file(fd, write=False)
        assert readable(again)
        os.close(again)
        os.close(sync_file)
    finally:
        os.close(fd)


def spawn(role: str, socket_dir: os.PathLike, name: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.kernel.vgem_stream_client", role, str(socket_dir), name, *args],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def expect(process: subprocess.Popen, event: str) -> dict:
    line = json_line(process)
    assert line["event"] == event, line
    return line


def command(process: subprocess.Popen, text: str) -> None:
    assert process.stdin is not None
    process.stdin.write(text + "\n")
    process.stdin.flush()


def test_consumer_wait_fence_blocks_until_the_producer_signals_its_vgem_fence(vgem_card, broker, capsys):
    # The fixture only proves a card exists here; the producer process opens its own.
    producer = spawn("producer", broker.socket_dir, "vgem-cam")
    broker.clients.append(producer)
    created = expect(producer, "created")
    assert created["card"] == vgem_card.path
    consumer = spawn("consumer", broker.socket_dir, "vgem-cam", "--fence-timeout", "5", "--blocked-check", "0.5")
    broker.clients.append(consumer)
    expect(consumer, "subscribed")
    command(producer, "wait-consumers 1")
    assert expect(producer, "consumers")["count"] == 1

    command(producer, "publish")
    published = expect(producer, "published")
    assert published["pending"], "the exported sync_file was already readable: the fence was not pending"
    received = expect(consumer, "received")
    assert (received["seq"], received["fences"], received["meta"]) == (published["seq"], 1, "vgem")
    check = expect(consumer, "blocked-check")
    assert check["blocked"], f"wait_fence returned before the fence was signalled: {check}"

    command(producer, "signal")
    signalled = json_line(producer)
    assert signalled["event"] == "signalled", (
        f"the fence expired before the test signalled it (the driver's 10 s timeout): {signalled}"
    )
    fence = expect(consumer, "fence")
    assert fence["signalled"] is True, fence
    latency = fence["t"] - signalled["t"]
    assert latency < 1.0, f"wait_fence returned {latency:.3f} s after the signal"
    assert fence["waited"] >= check["after"], fence
    with capsys.disabled():  # the lane's log shows the timings
        print(
            f"\nvgem wait_fence: still blocked after {check['after']:.3f} s; returned True after "
            f"{fence['waited']:.3f} s in all, {latency * 1000:.1f} ms after VGEM_FENCE_SIGNAL "
            f"(published -> signal {signalled['t'] - published['t']:.3f} s)"
        )

    command(producer, "close")
    expect(producer, "closed")
    end = expect(consumer, "end")
    assert end["first_bytes_seq"] == published["seq"]
    assert producer.wait(30) == 0 and consumer.wait(30) == 0


def test_a_dma_buf_slot_sends_its_implicit_fences_on_publish_and_release(vgem_card, broker):
    producer = spawn("implicit-producer", broker.socket_dir, "vgem-implicit")
    broker.clients.append(producer)
    expect(producer, "created")
    consumer = spawn("implicit-consumer", broker.socket_dir, "vgem-implicit", "--blocked-check", "0.3")
    broker.clients.append(consumer)
    expect(consumer, "subscribed")
    command(producer, "wait-consumers 1")
    assert expect(producer, "consumers")["count"] == 1

    # Publish with the producer's "GPU" write pending and no fence= : the SDK sent the buffer's own.
    command(producer, "publish")
    published = expect(producer, "published")
    received = expect(consumer, "received")
    assert (received["seq"], received["fences"], received["dmabuf"]) == (published["seq"], 1, True), received
    assert expect(consumer, "blocked-check")["blocked"], "wait_fence returned with the write fence pending"
    command(producer, "signal")
    expect(producer, "signalled")
    assert expect(consumer, "fence")["signalled"] is True

    # Release with the consumer's "GPU" read pending and no fence= : the producer's acquire waits for it.
    assert expect(consumer, "released")["first_bytes_seq"] == published["seq"]
    command(producer, "acquire 0.5")
    blocked = expect(producer, "acquire")
    assert blocked["got"] is False and "release fences did not signal" in blocked["error"], blocked
    command(consumer, "signal")
    expect(consumer, "signalled")
    command(producer, "acquire 5")
    acquired = expect(producer, "acquire")
    assert acquired["got"] is True and acquired["waited"] < 1.0, acquired

    command(producer, "close")
    expect(producer, "closed")
    expect(consumer, "end")
    assert producer.wait(30) == 0 and consumer.wait(30) == 0
