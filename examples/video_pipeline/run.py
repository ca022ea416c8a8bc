"""Run the pipeline as real processes: on bufbroker streams, and copied through pipes.

``run_bufbroker(socket_dir, ...)`` starts decoder, analyser and encoder as
three separate commands (``python -m examples.video_pipeline.decoder
SOCKET_DIR ...`` and so on) against a broker that serves ``socket_dir``:
unrelated processes that share nothing but that dir and find each other
by stream name; each writes its result as JSON into a file of a temp dir.
``run_piped(...)`` runs the comparison, three children of this process
joined by pipes. Both return plain dicts the report and the tests read.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

STEP_TIMEOUT = 60.0


def _receive(connection: Any, processes: list, what: str, timeout: float = STEP_TIMEOUT) -> Any:
    """The next message on ``connection``; fail fast if one of ``processes`` died first."""
    deadline = time.monotonic() + timeout
    while not connection.poll(0.05):
        for process in processes:
            if process.exitcode is not None and process.exitcode != 0:
                raise RuntimeError(f"{process.name} exited with status {process.exitcode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout} s")
    return connection.recv()


class _Children:
    """Processes started for one run; any still alive at the end are killed."""

    def __init__(self, stack: ExitStack) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.processes: list = []
        self.connections: list = []
        stack.callback(self._close)

    def pipe(self, duplex: bool = False) -> tuple:
        ends = self.ctx.Pipe(duplex=duplex)
        self.connections.extend(ends)
        return ends

    def start(self, name: str, target: Any, *args: Any) -> Any:
        process = self.ctx.Process(target=target, args=args, name=name)
        process.start()
        self.processes.append(process)
        return process

    def keep_only(self, *connections: Any) -> None:
        """Close this process's copies of every other pipe end (the children have theirs),
        so a child that dies shows up as EOF to its peers."""
        for connection in self.connections:
            if not any(connection is keep for keep in connections):
                connection.close()

    def join(self) -> None:
        for process in self.processes:
            process.join(STEP_TIMEOUT)
            if process.exitcode != 0:
                raise RuntimeError(f"{process.name} exited with status {process.exitcode}")

    def _close(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join()
            process.close()
        for connection in self.connections:
            connection.close()


# examples/video_pipeline/run.py -> the checkout's root, where `python -m examples...` finds the package
CHECKOUT = Path(__file__).resolve().parents[2]


class _Commands:
    """The stage commands of one run, each its own process; any still running at the end are killed."""

    def __init__(self, stack: ExitStack, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = dict(os.environ)
        path = self.env.get("PYTHONPATH", "")
        self.env["PYTHONPATH"] = str(CHECKOUT) + (os.pathsep + path if path else "")
        stack.callback(self._close)

    def start(self, stage: str, *args: str) -> None:
        command = [sys.executable, "-m", f"examples.video_pipeline.{stage}", *args]
        command += ["--result", str(self.workdir / f"{stage}.json")]
        with open(self.workdir / f"{stage}.log", "wb") as log:
            self.processes[stage] = subprocess.Popen(
                command, cwd=CHECKOUT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def pids(self) -> dict[str, int]:
        return {stage: process.pid for stage, process in self.processes.items()}

    def results(self, timeout: float | None) -> dict[str, dict[str, Any]]:
        """Wait for every stage; fail fast (with its output) if one fails, kill the rest."""
        deadline = None if timeout is None else time.monotonic() + timeout
        running = dict(self.processes)
        while running:
            for stage, process in list(running.items()):
                status = process.poll()
                if status is None:
                    continue
                del running[stage]
                if status != 0:
                    raise RuntimeError(f"the {stage} exited with status {status}: {self._log(stage)}")
            if deadline is not None and time.monotonic() > deadline:
                raise RuntimeError(f"{', '.join(running)} still running after {timeout} s")
            time.sleep(0.02)
        return {stage: json.loads((self.workdir / f"{stage}.json").read_text()) for stage in self.processes}

    def _log(self, stage: str) -> str:
        return (self.workdir / f"{stage}.log").read_text(errors="replace").strip()[
            -4000:
        ] or "(no output)"  # a refused subscribe: message and trace

    def _close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


STAGE_ORDER = ("encoder", "analyser", "decoder")


def run_bufbroker(
    socket_dir: Path,
    source: Path,
    output: Path,
    timeout: float | None = None,
    order: Sequence[str] = STAGE_ORDER,
    extra: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Decode ``source`` through the streams of the broker at ``socket_dir`` into ``output``.

    The three stages start in any order: the encoder waits for the streams
    it subscribes to, the analyser for its consumer, the decoder for both
    of its consumers (by session name) before its first frame.
    ``timeout``: seconds for the whole run (None: no limit; each stage
    gives up after STEP_TIMEOUT seconds without progress anyway).
    ``order``: the order the stages are started in (any order works).
    ``extra``: more arguments per stage, e.g. ``{"encoder": ["--formats", "NV12"]}``.
    """
    from examples.video_pipeline.handoff import ANALYSED, ANALYSER, DECODED, ENCODER

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bufbroker-video-stages-")))
        commands = _Commands(stack, workdir)
        directory = str(socket_dir)
        arguments = {
            "encoder": (directory, str(output), "--frames", DECODED, "--analysis", ANALYSED),
            "analyser": (directory, "--input", DECODED, "--output", ANALYSED),
            "decoder": (directory, str(source), "--stream", DECODED, "--consumers", f"{ANALYSER},{ENCODER}"),
        }
        for stage in order:
            commands.start(stage, *arguments[stage], *(extra or {}).get(stage, ()))
        pids = commands.pids()
        results = commands.results(timeout)
    decoded, analysed, encoded = results["decoder"], results["analyser"], results["encoder"]
    return {
        "ready": decoded["ready"],
        "pids": pids,
        "attached": {"analyser": analysed["attached"], "encoder": encoded["attached"]},
        "decoder": decoded,
        "analyser": analysed,
        "encoder": encoded,
        "seconds": encoded["finished"] - decoded["started"],
    }


def run_piped(source: Path, output: Path, max_frame_bytes: int) -> dict[str, Any]:
    """The same pipeline with every frame copied through two pipes."""
    from examples.video_pipeline.piped import piped_analyser_main, piped_decoder_main, piped_encoder_main

    with ExitStack() as stack:
        children = _Children(stack)
        dec_control, dec_control_child = children.pipe(duplex=True)
        ana_control, ana_control_child = children.pipe(duplex=True)
        enc_control, enc_control_child = children.pipe(duplex=True)
        frames_rx, frames_tx = children.pipe()
        analysed_rx, analysed_tx = children.pipe()
        everyone = [
            children.start("piped-decoder", piped_decoder_main, str(source), dec_control_child, frames_tx),
            children.start(
                "piped-analyser", piped_analyser_main, ana_control_child, frames_rx, analysed_tx, max_frame_bytes
            ),
            children.start(
                "piped-encoder", piped_encoder_main, str(output), enc_control_child, analysed_rx, max_frame_bytes
            ),
        ]
        children.keep_only(dec_control, ana_control, enc_control)
        _receive(ana_control, everyone, "the piped analyser's start-up")
        _receive(enc_control, everyone, "the piped encoder's start-up")
        dec_control.send("start")
        decoded = _receive(dec_control, everyone, "the piped decoder's result")
        analysed = _receive(ana_control, everyone, "the piped analyser's result")
        encoded = _receive(enc_control, everyone, "the piped encoder's result")
        children.join()
    seconds = encoded["finished"] - decoded["started"]
    return {"decoder": decoded, "analyser": analysed, "encoder": encoded, "seconds": seconds}
