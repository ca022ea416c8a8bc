"""`bufbroker top`: the live terminal view, over gRPC (HTTP off)."""

from __future__ import annotations

import subprocess
import sys


def _cli(broker, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bufbroker_broker", *args, "--socket-dir", str(broker.socket_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_top_shows_sessions_buffers_and_importers_with_http_off(broker):
    exporter, info = broker.exporter("--name", "watched", "--offers", "segments,memfd")
    holder = broker.spawn("holder", "watched", "--accept", "segments")
    assert holder.stdout.readline().strip() == '{"ready": true}'
    out = _cli(broker, "top", "--once", "--interval", "0.2")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "3 sessions  1 buffers  1 attachments  1 mappings" in text
    assert "(this top)" in text and "watched" in text
    assert f"{holder.pid}:segments" in text and str(exporter.pid) in text
    assert "sent 0.0/s" in text
    live = _cli(broker, "top", "--iterations", "2", "--interval", "0.1")
    assert live.returncode == 0 and "watched" in live.stdout
    exporter.stdin.close()
    assert exporter.wait(10) == 0 and holder.wait(10) == 0
