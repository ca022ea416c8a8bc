"""The README's examples run as written: exporter and importer in two unrelated
processes, the importer stopping on its on_revoke handler, and the layout example.

The code is taken from README.md itself, so a README that drifts from the SDK
fails here. The only edits: the socket dir, and the exporter waits on stdin
where the README writes ``...`` (so the test decides when its session ends).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import bufbroker
from bufbroker.v1 import broker_pb2 as pb
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _block(after: str) -> str:
    """The first python block after the line ``after``."""
    start = README.index(after)
    return next(code for code in BLOCKS if README.index(code) > start)


def _python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_first_exporter_and_importer_examples_run_and_the_importer_stops_on_revoke(broker):
    exporter_code = _block("Exporter:").replace('"/tmp/bb"', repr(str(broker.socket_dir)))
    marker = re.search(r"^( +)\.\.\. .*$", exporter_code, flags=re.M)
    assert marker, "the exporter example no longer has its `...` line"
    exporter_code = "import sys\n" + exporter_code.replace(marker.group(0), f"{marker.group(1)}sys.stdin.readline()")
    exporter_code += "\n    print('exported', flush=True)\n    sys.stdin.readline()\n"
    importer_code = _block("Importer:").replace('"/tmp/bb"', repr(str(broker.socket_dir)))
    importer_code += "\nprint('importer done', flush=True)\n"

    exporter = _python(exporter_code)
    importer = None
    try:
        # The README's exporter registers camera0, then (at its `...`) keeps its session.
        with bufbroker.connect(broker.socket_dir) as observer:
            observer.attach("camera0", wait=20).detach()  # returns once the exporter registered it
        importer = _python(importer_code)
        first = importer.stdout.readline().strip()
        assert first == "segments", (first, importer.stderr.read() if importer.poll() is not None else "")
        assert importer.stdout.readline().strip() == "b'hello'"  # the loop reads what the exporter wrote
        # The producer goes away: its session ends, the buffer is revoked, on_revoke stops the loop.
        _, exporter_err = exporter.communicate(input="\n\n", timeout=20)
        assert exporter.returncode == 0, exporter_err
        out, err = importer.communicate(timeout=20)
        assert importer.returncode == 0, err
        assert out.splitlines()[-1] == "importer done"
    finally:
        for process in (exporter, importer):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()


def _printed_comments(code: str) -> list[str]:
    """What each ``print(...)  # OUTPUT`` line of a README block says it prints."""
    return [line.split("#", 1)[1].strip() for line in code.splitlines() if line.strip().startswith("print(")]


def test_the_layout_example_prints_what_it_shows(broker):
    code = _block("### Layout and formats").replace('"/tmp/bb"', repr(str(broker.socket_dir)))
    process = _python(code)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out.splitlines() == _printed_comments(code)


def test_the_pair_negotiation_example_and_its_explain_output_are_what_they_show(broker):
    code = _block("**Formats are negotiated as (format, modifier) pairs**")
    setup = "import bufbroker\nfrom bufbroker import formats\nlayout = formats.derive_layout('NV12', 1920, 1080)\n"
    shown = README[README.index("$ bufbroker explain cam") :].split("```", 1)[0].splitlines()
    command, expected = shown[0].removeprefix("$ ").split(), shown[1:]
    with bufbroker.connect(broker.socket_dir) as exporter, bufbroker.connect(broker.socket_dir) as importer:
        namespace: dict[str, object] = {"exporter": exporter, "importer": importer}
        exec(setup + code, namespace)
        assert namespace["attachment"].format == code.split("attachment.format  # ")[1].split()[0].strip('"')
        explained = subprocess.run(
            [sys.executable, "-m", "bufbroker_broker", *command[1:], "--socket-dir", str(broker.socket_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
        )
    lines = explained.stdout.splitlines()
    # The buffer id in the first line is this broker's.
    assert [re.sub(r"buffer \d+", "buffer N", line) for line in lines] == [
        re.sub(r"buffer \d+", "buffer N", line) for line in expected
    ]


def test_the_stream_examples_run_as_two_unrelated_processes(broker):
    producer_code = _block("The usual job is a stream of frames").replace('"/tmp/bb"', repr(str(broker.socket_dir)))
    consumer_code = _block("Consumer (another process").replace('"/tmp/bb"', repr(str(broker.socket_dir)))
    consumer = _python(consumer_code)  # first: it waits for the stream
    producer = None
    try:
        # The README's producer does not wait for consumers (a live source would not): start it once the
        # consumer's session is there, so the consumer subscribes before the 300 frames are all gone.
        with bufbroker.connect(broker.socket_dir) as observer:
            deadline = time.monotonic() + 30
            while not any(s.name == "viewer" for s in observer.call("ListSessions", pb.ListSessionsRequest()).sessions):
                assert time.monotonic() < deadline and consumer.poll() is None, consumer.stderr.read()
                time.sleep(0.01)
        producer = _python(producer_code)
        _, producer_err = producer.communicate(timeout=60)
        assert producer.returncode == 0, producer_err
        out, err = consumer.communicate(timeout=60)
        assert consumer.returncode == 0, err
        seen = [line.split(" ", 1) for line in out.splitlines()]
        seqs = [int(seq) for seq, _ in seen]
        # It joined while the producer started: from the next frame on, every one, in order.
        assert seqs and seqs[-1] == 300 and seqs == list(range(seqs[0], 301)), seqs[:5]
        for seq, rest in seen:
            n = int(seq) - 1
            assert rest == f"b'frame {n}' {n % 256}", (seq, rest)
    finally:
        for process in (producer, consumer):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
