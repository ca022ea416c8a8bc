"""Streams end to end: a real broker, a producer and consumers as unrelated processes.

The processes share only the broker's socket dir: each finds the stream by
name. The test talks to each over its own stdin/stdout (commands in, one
JSON line per event out) and never passes anything between them. Every
frame carries the numbered pattern (tests/clients/stream_pattern.py) and
each consumer checks it twice per frame. The broker's fd count returns to
its baseline at teardown (the broker_factory fixture).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import stream_pb2 as link_pb
from tests.conftest import REPO_ROOT

SIZE = 65536


class Client:
    """A test client process whose JSON lines are read on a thread, so the test can wait with a timeout."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: queue.Queue[dict | None] = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def expect(self, event: str, timeout: float = 10.0, **fields: object) -> dict:
        """The next line with this event (and these fields); fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {event!r} within {timeout} s; saw {self.seen[-5:]}"
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"the client exited ({self.process.wait()}) before {event!r}; saw {self.seen[-5:]}"
            self.seen.append(line)
            if line["event"] == event and all(line.get(k) == v for k, v in fields.items()):
                return line

    def send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def producer(broker, name: str, *args: str, pass_fds: tuple[int, ...] = ()) -> Client:
    if pass_fds:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.clients.stream_producer", str(broker.socket_dir), name, *args],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=pass_fds,
        )
        broker.clients.append(process)
    else:
        process = broker.spawn("stream_producer", name, "--size", str(SIZE), *args)
    client = Client(process)
    client.expect("created")
    return client


def consumer(broker, name: str, *args: str) -> Client:
    client = Client(broker.spawn("stream_consumer", name, *args))
    client.expect("subscribed")
    return client


def finish(client: Client, timeout: float = 10.0) -> dict:
    end = client.expect("end", timeout)
    assert client.process.wait(timeout) == 0
    return end


def test_queue_mode_delivers_every_frame_in_order_to_three_consumers_without_a_torn_frame(broker):
    source = producer(broker, "cam0", "--slots", "3")
    sinks = [consumer(broker, "cam0", "--mode", "queue", "--max-held", "1", "--frames", "120") for _ in range(3)]
    slow = consumer(broker, "cam0", "--mode", "queue", "--frames", "120", "--delay", "0.002")
    source.send("wait-consumers 4")
    assert source.expect("consumers")["count"] == 4
    source.send("publish 120")
    source.expect("done", timeout=30)
    for sink in [*sinks, slow]:
        end = finish(sink)
        assert end["seqs"] == list(range(1, 121))
        assert end["torn"] == []
        assert end["skipped"] == 0
    source.send("close")
    source.expect("closed")


def test_latest_mode_drops_frames_for_a_slow_consumer_and_counts_them(broker):
    source = producer(broker, "cam0", "--slots", "4")
    slow = consumer(broker, "cam0", "--mode", "latest", "--delay", "0.02")
    fast = consumer(broker, "cam0", "--mode", "queue", "--frames", "100")
    source.send("wait-consumers 2")
    source.expect("consumers")
    source.send("publish 100 0.002")
    source.expect("done", timeout=30)
    assert finish(fast)["seqs"] == list(range(1, 101))
    source.send("drain")
    source.expect("drained")
    source.send("counters")
    counters = {c["mode"]: c for c in source.expect("counters")["consumers"]}
    assert counters["latest"]["dropped"]["busy"] > 0
    source.send("close")
    end = finish(slow)
    assert end["torn"] == []
    dropped = counters["latest"]["dropped"]["busy"]
    # What the producer dropped for it, the consumer missed: gaps between its frames, and after its last.
    assert end["skipped"] + (100 - end["seqs"][-1]) == dropped
    assert end["received"] + dropped == 100
    assert end["seqs"] == sorted(end["seqs"])
    assert "the producer ended the stream" in end["reason"]


def test_kill_9_of_a_consumer_gives_its_slots_back_within_100_ms(broker):
    source = producer(broker, "cam0", "--slots", "3", "--stall-timeout", "30")
    doomed = consumer(broker, "cam0", "--mode", "queue", "--max-held", "2", "--hold-after", "2")
    other = consumer(broker, "cam0", "--mode", "queue", "--frames", "40")
    source.send("wait-consumers 2")
    source.expect("consumers")
    source.send("publish 40 0.001")
    doomed.expect("holding", seq=2)
    blocked = source.expect("blocked")  # two slots held, the third waited for by the doomed consumer's backlog
    time.sleep(0.1)
    killed_at = time.monotonic()
    doomed.kill()
    resumed = source.expect("published", seq=blocked["seq"])
    assert resumed["t"] - killed_at < 0.1, (
        f"the producer got its slots back {resumed['t'] - killed_at:.3f} s after the kill"
    )
    source.expect("done")
    end = finish(other)
    assert end["seqs"] == list(range(1, 41))
    assert end["torn"] == []
    with broker.connect() as observer:  # the broker forgot the dead consumer's link (and the finished one's)
        deadline = time.monotonic() + 2
        while observer.call("ListStreams", pb.ListStreamsRequest(name="cam0")).streams[0].consumers:
            assert time.monotonic() < deadline, "the broker still lists links of consumers that are gone"
            time.sleep(0.02)
    source.send("close")
    source.expect("closed")


def test_kill_9_of_the_producer_is_end_of_stream_for_every_consumer(broker):
    source = producer(broker, "cam0", "--slots", "3")
    sinks = [consumer(broker, "cam0") for _ in range(2)]
    source.send("wait-consumers 2")
    source.expect("consumers")
    source.send("publish 10")
    source.expect("done")
    for sink in sinks:
        sink.expect("frame", seq=10)
    source.kill()
    for sink in sinks:
        end = finish(sink)
        assert end["seqs"] == list(range(1, 11))
        assert "closed" in end["reason"]
    with broker.connect() as observer:  # the producer's session ended: so did its stream
        deadline = time.monotonic() + 2
        while observer.call("ListStreams", pb.ListStreamsRequest()).streams:
            assert time.monotonic() < deadline, "the stream outlived its producer"
            time.sleep(0.02)


def test_a_late_joiner_receives_from_the_next_frame_on(broker):
    source = producer(broker, "cam0", "--slots", "3")
    early = consumer(broker, "cam0", "--frames", "30")
    source.send("wait-consumers 1")
    source.expect("consumers")
    source.send("publish 10")
    source.expect("done")
    late = consumer(broker, "cam0", "--frames", "20")
    source.send("wait-consumers 2")
    source.expect("consumers", count=2)
    source.send("publish 20")
    source.expect("done")
    assert finish(early)["seqs"] == list(range(1, 31))
    hello = late.expect("hello")
    end = finish(late)
    assert hello["next_seq"] == 11
    assert end["seqs"] == list(range(11, 31))
    source.send("close")
    source.expect("closed")


def test_a_consumer_holding_past_the_stall_timeout_gets_slot_reclaimed_and_the_producer_goes_on(broker):
    source = producer(broker, "cam0", "--slots", "2", "--stall-timeout", "0.3")
    stuck = consumer(broker, "cam0", "--mode", "queue", "--max-held", "1", "--hold-after", "1", "--hold-for", "0.8")
    source.send("wait-consumers 1")
    source.expect("consumers")
    source.send("publish 6")
    stuck.expect("holding", seq=1)
    source.expect("done", timeout=10)
    waits = [line["waited"] for line in source.seen if line["event"] == "published"]
    assert max(waits) < 0.3 + 0.25, f"the producer blocked {max(waits):.3f} s, past the stall timeout 0.3 s"
    reclaimed = stuck.expect("reclaimed", seq=1)
    assert "slot 0 (frame 1) was reclaimed by the producer after you held it" in reclaimed["error"]
    assert "stall_timeout 0.3 s" in reclaimed["error"]
    source.send("close")
    source.expect("closed")
    finish(stuck)


def test_on_stall_report_keeps_the_slot_held_and_the_broker_shows_the_consumer_stalled(broker):
    source = producer(broker, "cam0", "--slots", "2", "--stall-timeout", "0.2", "--on-stall", "report")
    stuck = consumer(broker, "cam0", "--max-held", "1", "--hold-after", "1", "--hold-for", "1.5")
    source.send("wait-consumers 1")
    source.expect("consumers")
    source.send("publish 1")
    stuck.expect("holding", seq=1)
    time.sleep(1.0)  # past the stall timeout, and a report period
    with broker.connect() as observer:
        (info,) = observer.call("ListStreams", pb.ListStreamsRequest(name="cam0")).streams
    assert info.on_stall == pb.STALL_POLICY_REPORT
    assert [c.stalled for c in info.consumers] == [True]
    assert info.consumers[0].counters.held_now == 1
    assert info.consumers[0].counters.longest_hold > 0.2
    stuck.expect("not-reclaimed", seq=1)
    finish(stuck)
    source.send("close")
    source.expect("closed")


def test_wait_fence_blocks_until_the_fence_passed_on_publish_is_signalled(broker):
    fence = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        source = producer(
            broker, "cam0", "--slots", "2", "--size", str(SIZE), "--fence-fd", str(fence), pass_fds=(fence,)
        )
        sink = consumer(broker, "cam0", "--frames", "1", "--fence-timeout", "10")
        source.send("wait-consumers 1")
        source.expect("consumers")
        source.send("publish 1")
        waiting = sink.expect("fence-waiting", seq=1)
        assert waiting["fences"] == 1
        time.sleep(0.3)
        assert all(line["event"] != "fence-signalled" for line in sink.seen)
        assert sink.lines.empty(), "wait_fence returned before the fence was signalled"
        os.eventfd_write(fence, 1)
        signalled = sink.expect("fence-signalled", seq=1)
        assert signalled["signalled"] is True
        assert signalled["waited"] >= 0.3
        assert finish(sink)["torn"] == []
        source.send("close")
        source.expect("closed")
    finally:
        os.close(fence)


def test_the_asyncio_path_receives_every_frame(broker):
    source = producer(broker, "cam0", "--slots", "3")
    sink = consumer(broker, "cam0", "--async", "--frames", "50")
    source.send("wait-consumers 1")
    source.expect("consumers")
    source.send("publish 50")
    source.expect("done")
    end = finish(sink)
    assert end["seqs"] == list(range(1, 51))
    assert end["torn"] == []
    source.send("close")
    source.expect("closed")


def test_a_consumer_subscribing_first_waits_for_the_stream_to_be_created(broker):
    sink = Client(broker.spawn("stream_consumer", "later", "--frames", "5", "--wait", "10"))
    time.sleep(0.3)
    source = producer(broker, "later", "--slots", "2")
    sink.expect("subscribed")
    source.send("wait-consumers 1")
    source.expect("consumers")
    source.send("publish 5")
    assert finish(sink)["seqs"] == [1, 2, 3, 4, 5]
    source.send("close")
    source.expect("closed")


@pytest.mark.parametrize("closing", ["close", "kill"])
def test_the_broker_keeps_no_link_fd_after_producers_and_consumers_end(broker, closing):
    baseline = broker.settled_fd_count()
    source = producer(broker, "cam0", "--slots", "2")
    sinks = [consumer(broker, "cam0", "--frames", "3") for _ in range(3)]
    source.send("wait-consumers 3")
    source.expect("consumers")
    source.send("publish 3")
    for sink in sinks:
        finish(sink)
    if closing == "close":
        source.send("close")
        source.expect("closed")
    else:
        source.kill()
    source.process.wait(10)
    assert broker.wait_for_fds(baseline, timeout=3) == baseline


def test_the_broker_shows_the_stream_its_named_sessions_and_the_counters_they_report(broker):
    source = producer(broker, "cam0", "--slots", "2")
    sink = consumer(broker, "cam0", "--frames", "30")
    source.send("wait-consumers 1")
    source.expect("consumers")
    source.send("publish 20 0.05")  # 1 s: each side reports twice
    source.expect("done", timeout=10)
    time.sleep(0.6)  # the next report period
    with broker.connect() as observer:
        streams = observer.call("ListStreams", pb.ListStreamsRequest(name="cam0")).streams
    assert len(streams) == 1
    info = streams[0]
    assert info.producer_name == "test-producer"
    assert info.producer.published == 20, info.producer
    assert info.report_age >= 0
    assert [(c.name, c.mode) for c in info.consumers] == [("test-consumer", link_pb.CONSUMER_MODE_QUEUE)]
    assert info.consumers[0].counters.delivered == 20, info.consumers[0]
    # The consumer's last period as a latency histogram (frames it received then; bufbroker_stream_handoff_latency_seconds).
    counted = info.consumers[0].counters.latency_buckets
    assert len(counted) == 14 and 1 <= sum(counted) <= 20, info.consumers[0]
    source.send("publish 10")
    assert finish(sink)["seqs"] == list(range(1, 31))
    source.send("close")
    source.expect("closed")


def test_frames_keep_flowing_while_the_broker_restarts_and_new_consumers_join_after(tmp_path):
    from bufbroker_broker.cli.launch import start_broker, stop_broker

    socket_dir = tmp_path / "run"
    broker = start_broker(socket_dir, ["--http", "none"])
    processes: list[subprocess.Popen] = []

    def spawn(module: str, *args: str) -> Client:
        process = subprocess.Popen(
            [sys.executable, "-m", f"tests.clients.{module}", str(socket_dir), *args],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        return Client(process)

    try:
        source = spawn("stream_producer", "cam0", "--slots", "3", "--size", str(SIZE))
        source.expect("created")
        early = spawn("stream_consumer", "cam0", "--frames", "60")
        early.expect("subscribed")
        source.send("wait-consumers 1")
        source.expect("consumers")
        source.send("publish 40 0.03")
        early.expect("frame", seq=10)
        broker.send_signal(signal.SIGKILL)
        broker.wait()
        killed_at = time.monotonic()
        early.expect("frame", seq=40)
        source.expect("done", timeout=10)
        during = [line["seq"] for line in early.seen if line["event"] == "frame" and line["t"] > killed_at]
        assert len(during) >= 10, f"only frames {during} arrived with no broker"  # the link carries frames as before
        broker = start_broker(socket_dir, ["--http", "none"])
        restarted_at = time.monotonic()
        late = spawn("stream_consumer", "cam0", "--frames", "20", "--wait", "10")
        late.expect("subscribed", timeout=15)  # the producer created the stream again at the new broker
        joined = time.monotonic() - restarted_at
        source.send("wait-consumers 2")
        assert source.expect("consumers")["count"] == 2
        source.send("publish 20")
        end = early.expect("end", timeout=15)
        assert end["seqs"] == list(range(1, 61)), "frames were lost while the broker restarted"
        assert end["torn"] == []
        late_end = late.expect("end", timeout=10)
        assert late_end["seqs"] == list(range(41, 61))
        assert late_end["torn"] == []
        source.expect("done", timeout=10)
        print(f"\nbroker restart: 0 of 60 frames lost; a new consumer joined {joined:.3f} s after the restart")
        source.send("close")
        source.expect("closed")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdin.close()
            process.stdout.close()
        assert stop_broker(broker) == 0


def test_a_stream_made_from_a_layout_has_slots_of_that_size_and_layout(broker):
    import bufbroker
    from bufbroker.planes import packed_layout

    layout, size = packed_layout("NV12", 64, 32, align=64)
    with bufbroker.connect(broker.socket_dir) as making, bufbroker.connect(broker.socket_dir) as using:
        stream = making.create_stream("layout", slots=2, layout=layout, labels={"camera": "front"})
        assert [b.size for b in stream.buffers] == [size, size]
        sub = using.subscribe("layout", accept=["memfd"])
        assert [a.mapping.layout for a in sub.attachments] == [layout, layout]
        (listed,) = using.buffers(labels={"bufbroker.stream": "layout", "bufbroker.slot": "1"})
        assert listed.labels["camera"] == "front"
        deadline = time.monotonic() + 5
        while not stream.consumers():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        with stream.acquire(1) as frame:
            frame.memoryview()[:4] = b"nv12"
            frame.publish(b"m")
        with sub.receive(5) as got:
            assert bytes(got.memoryview()[:4]) == b"nv12" and got.meta == b"m"
        sub.close()
        stream.close()
        assert making.buffers(labels={"bufbroker.stream": "layout"}) == []


def _check_generations(end: dict, moved_after: int) -> None:
    """Every frame shows its generation's size and pattern; generations never go backwards."""
    assert end["torn"] == [], end["torn"][:5]
    assert end["stale"] == 0
    assert end["generations"] == sorted(end["generations"]), "a generation went backwards"
    for seq, generation, shape in zip(end["seqs"], end["generations"], end["shapes"], strict=True):
        if seq <= moved_after:
            assert (generation, shape) == (1, "320x240:76800"), (seq, generation, shape)
        else:
            assert (generation, shape) == (2, "640x480:307200"), (seq, generation, shape)


def test_a_move_mid_stream_shows_each_consumer_the_new_generation_on_the_next_frame_never_a_mixed_one(broker):
    baseline = broker.settled_fd_count()
    source = producer(broker, "cam0", "--slots", "4", "--layout", "320x240")
    queued = consumer(broker, "cam0", "--mode", "queue", "--frames", "120", "--delay", "0.003")
    latest = consumer(broker, "cam0", "--mode", "latest", "--delay", "0.01")
    source.send("wait-consumers 2")
    assert source.expect("consumers")["count"] == 2
    # The move is asked for while the consumers still read the first 60 frames' backlog.
    source.send("publish 60")
    source.send("move 640x480")
    source.send("publish 60")
    moved = source.expect("moved", timeout=30)
    assert (moved["generation"], moved["size"], moved["last_seq"]) == (2, 640 * 480, 60)
    source.expect("done", timeout=30)
    end = finish(queued, timeout=30)
    assert end["seqs"] == list(range(1, 121)), "the queue consumer lost a frame across the move"
    assert end["skipped"] == 0
    _check_generations(end, moved_after=60)
    assert end["generations"][60] == 2  # frame 61, the first after the move
    source.send("drain")
    assert source.expect("drained")["ok"]
    source.send("close")
    source.expect("closed")
    end = finish(latest, timeout=30)
    _check_generations(end, moved_after=60)
    assert 1 in end["generations"] and 2 in end["generations"]
    assert "the producer ended the stream" in end["reason"]
    assert source.process.wait(10) == 0
    assert broker.wait_for_fds(baseline, timeout=3) == baseline


def test_the_producer_reports_each_consumer_s_fps_and_the_exact_slots_it_holds(broker_factory):
    import httpx

    from tests.http.conftest import free_port

    port = free_port()
    broker = broker_factory("--http", f"127.0.0.1:{port}")
    source = producer(broker, "cam0", "--slots", "4", "--stall-timeout", "30")
    holding = consumer(broker, "cam0", "--mode", "latest", "--hold-after", "1", "--hold-for", "3")
    flowing = consumer(broker, "cam0", "--mode", "latest")
    holding_link = holding.seen[0]["link_id"]
    source.send("wait-consumers 2")
    source.expect("consumers")
    source.send("publish 80 0.02")  # 1.6 s at 50 fps
    held = holding.expect("holding")
    time.sleep(1.1)  # two report periods while frames flow
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        shown = http.get("/v1/streams/cam0").json()
    links = {c["link_id"]: c["counters"] for c in shown["consumers"]}
    assert links[holding_link]["held_slots"] == [held["slot"]] and links[holding_link]["held_now"] == 1
    [other] = [c for link_id, c in links.items() if link_id != holding_link]
    assert other["held_slots"] in ([], [0], [1], [2], [3])
    assert 10 < other["fps"] < 80, other  # frames delivered per second over the last report period
    assert links[holding_link]["fps"] < 5  # it holds the one slot it may: nothing more is delivered to it
    source.expect("done", timeout=10)
    source.send("close")
    source.expect("closed")
    finish(holding)
    finish(flowing)
