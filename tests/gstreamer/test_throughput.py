"""Frames/s and copies per frame of 1280x720 NV12 at unpaced rate, beside GStreamer's own shmsink/shmsrc.

Printed (``pytest -s``), not asserted: the numbers depend on the host.
Each gst-to-gst figure is a pipeline's time for N2 frames minus its time
for N1 (as gst-launch reports it), so start-up does not count: the
sender's for bufbroker (it ends once the consumer released every frame),
the receiver's for shmsrc (which sees no EOS and stops at num-buffers).
"""

from __future__ import annotations

import re
import time

from tests.gstreamer.test_elements import CAPS, finish, gst_launch, json_lines, python_client, stats

SOURCE = "videotestsrc pattern=solid-color foreground-color=0xff336699"  # cheap to draw: the transport dominates
N1, N2 = 100, 1100


def _seconds(out: str) -> float:
    match = re.search(r"Execution ended after (\d+):(\d+):(\d+\.\d+)", out)
    assert match, f"no execution time in:\n{out[-2000:]}"
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _bufbroker_pair(broker, env, frames: int, name: str) -> tuple[float, dict, dict]:
    src = gst_launch(
        env, f"bufbrokersrc stream={name} socket-dir={broker.socket_dir} ! fakesink sync=false enable-last-sample=false"
    )
    sink = gst_launch(
        env,
        f"{SOURCE} num-buffers={frames} ! {CAPS} ! bufbrokersink stream={name} socket-dir={broker.socket_dir} "
        "wait-consumers=1 sync=false",
    )
    sink_out, _ = finish(sink)
    src_out, _ = finish(src)
    return _seconds(sink_out), stats(sink_out, "bufbrokersink"), stats(src_out, "bufbrokersrc")


def _shm_pair(env, tmp_path, frames: int) -> float:
    """The receiving pipeline's time for ``frames`` frames (shmsrc sees no EOS: it stops at num-buffers)."""
    socket = tmp_path / f"shm-{frames}"
    sink = gst_launch(
        env,
        f"{SOURCE} num-buffers={frames} ! {CAPS} ! shmsink socket-path={socket} wait-for-connection=true sync=false",
    )
    deadline = time.monotonic() + 30
    while not socket.exists():
        assert time.monotonic() < deadline and sink.poll() is None, sink.communicate()
        time.sleep(0.01)
    src = gst_launch(
        env,
        f"shmsrc socket-path={socket} is-live=true num-buffers={frames} ! {CAPS},framerate=30/1 ! "
        "fakesink sync=false enable-last-sample=false",
    )
    src_out, _ = finish(src)
    _, sink_err = sink.communicate(timeout=60)
    # shmsink 1.22 may fail its poll thread while it shuts down after EOS (EBUSY): the frames were all sent.
    assert sink.returncode == 0 or "Failed waiting on fd activity" in sink_err, sink_err
    return _seconds(src_out)


def test_print_throughput_against_shmsink_shmsrc(broker, gst_env, tmp_path):
    rows = []
    # GStreamer -> GStreamer through bufbroker, and through shmsink/shmsrc.
    t1, _, _ = _bufbroker_pair(broker, gst_env, N1, "tp-a")
    t2, sink_stats, src_stats = _bufbroker_pair(broker, gst_env, N2, "tp-b")
    rows.append(
        (
            "videotestsrc ! bufbrokersink | bufbrokersrc ! fakesink",
            (N2 - N1) / (t2 - t1),
            sink_stats["copies"] / sink_stats["frames"],
            src_stats["copies"] / src_stats["frames"],
        )
    )
    s1, s2 = _shm_pair(gst_env, tmp_path, N1), _shm_pair(gst_env, tmp_path, N2)
    # Copies by the elements' design: upstream allocates from shmsink's shm allocator (0), shmsrc wraps the area (0).
    rows.append(("videotestsrc ! shmsink | shmsrc ! fakesink", (N2 - N1) / (s2 - s1), 0.0, 0.0))

    # GStreamer -> Python: the sink's copy, the SDK consumer reads the slot in place.
    consumer = python_client(broker, "recording_consumer", "tp-c", str(tmp_path / "x.raw"), "--quiet")
    sink = gst_launch(
        gst_env,
        f"{SOURCE} num-buffers={N2} ! {CAPS} ! bufbrokersink stream=tp-c socket-dir={broker.socket_dir} "
        "wait-consumers=1 sync=false",
    )
    sink_out, _ = finish(sink)
    end = json_lines(finish(consumer)[0])[-1]
    copies = stats(sink_out, "bufbrokersink")
    rows.append(
        (
            "videotestsrc ! bufbrokersink -> Python subscriber",
            (end["frames"] - 1) / end["seconds"],
            copies["copies"] / copies["frames"],
            0.0,
        )
    )

    # Python -> GStreamer: the producer writes the slot, bufbrokersrc wraps it.
    producer = python_client(broker, "numbered_producer", "tp-d", str(N2))
    producer.stdout.readline()
    src = gst_launch(
        gst_env,
        f"bufbrokersrc stream=tp-d socket-dir={broker.socket_dir} ! fakesink sync=false enable-last-sample=false",
    )
    src_out, _ = finish(src)
    done = json_lines(finish(producer)[0])[-1]
    copies = stats(src_out, "bufbrokersrc")
    rows.append(
        (
            "Python producer -> bufbrokersrc ! fakesink",
            done["published"] / done["seconds"],
            0.0,
            copies["copies"] / copies["frames"],
        )
    )

    print("\n1280x720 NV12, unpaced                                 frames/s  copies/frame (sink side, src side)")
    for label, fps, sink_copies, src_copies in rows:
        print(f"{label:<54} {fps:8.0f}  {sink_copies:.0f}, {src_copies:.0f}")
    assert sink_stats["frames"] == src_stats["frames"] == N2 and done["published"] == N2
