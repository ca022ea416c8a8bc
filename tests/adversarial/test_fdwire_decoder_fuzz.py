"""The fd-channel decoder never raises anything but FdWireError, whatever the bytes.

With atheris installed, a coverage-guided run of fuzz_fdwire_decode.py for a
bounded number of inputs; without it, hypothesis drives the same target.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bufbroker import fdwire
from bufbroker.v1 import fd_channel_pb2 as fdpb

CATEGORY = "protocol fuzzing"
TARGET = Path(__file__).with_name("fuzz_fdwire_decode.py")
ATHERIS_RUNS = 30000


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
def test_fdwire_decode_survives_a_bounded_atheris_run(reliability, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(TARGET),
            f"-runs={ATHERIS_RUNS}",
            "-max_len=5000",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    done = re.search(r"Done (\d+) runs", result.stderr)
    assert done, result.stderr[-2000:]
    reliability.record(
        CATEGORY,
        cases=int(done.group(1)),
        note=f"atheris: fdwire.decode, {done.group(1)} coverage-guided inputs, no crash",
    )


VALID = fdwire.encode(fdpb.FdMessage(send_fds=fdpb.SendFds(nonce="seed", fd_count=1)))


DATAGRAMS = st.one_of(
    st.binary(max_size=5000),
    st.builds(lambda cut, tail: VALID[:cut] + tail, st.integers(0, len(VALID)), st.binary(max_size=16)),
)


def test_fdwire_decode_raises_only_fdwire_error(reliability):
    tried = []

    @settings(max_examples=500, deadline=None, database=None)
    @given(data=DATAGRAMS)
    def decode(data):
        tried.append(len(data))
        try:
            message = fdwire.decode(data)
        except fdwire.FdWireError:
            return
        assert message.WhichOneof("kind") is not None

    decode()
    reliability.record(
        CATEGORY, cases=len(tried), note=f"hypothesis: fdwire.decode, {len(tried)} datagrams (random and cut-short)"
    )
