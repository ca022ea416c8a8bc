"""Run the pipeline as real processes: on bufbroker, and copied through pipes.

``run_bufbroker(socket_dir, ...)`` runs decoder, analyser and encoder
against a broker that serves ``socket_dir``; ``run_piped(...)`` runs the
comparison. Both return plain dicts the report and the tests read.
"""

from __future__ import annotations

import multiprocessing
import secrets
import time
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


def run_bufbroker(socket_dir: Path, source: Path, output: Path) -> dict[str, Any]:
    """Decode ``source`` through a pool on the broker at ``socket_dir`` into ``output``."""
    from examples.video_pipeline.analyser import analyser_main
    from examples.video_pipeline.decoder import decoder_main
    from examples.video_pipeline.encoder import encoder_main

    with ExitStack() as stack:
        children = _Children(stack)
        dec_control, dec_control_child = children.pipe(duplex=True)
        ana_control, ana_control_child = children.pipe(duplex=True)
        enc_control, enc_control_child = children.pipe(duplex=True)
        frames_rx, frames_tx = children.pipe()
        analysed_rx, analysed_tx = children.pipe()
        ana_release_rx, ana_release_tx = children.pipe()
        enc_release_rx, enc_release_tx = children.pipe()
        run_id = f"video-{secrets.token_hex(4)}"
        decoder = children.start(
            "video-decoder",
            decoder_main,
            str(socket_dir),
            run_id,
            str(source),
            dec_control_child,
            frames_tx,
            {"analyser": ana_release_rx, "encoder": enc_release_rx},
        )
        ready = _receive(dec_control, [decoder], "pool from the decoder")
        analyser = children.start(
            "video-analyser",
            analyser_main,
            str(socket_dir),
            ready["names"],
            ana_control_child,
            frames_rx,
            analysed_tx,
            ana_release_tx,
        )
        encoder = children.start(
            "video-encoder",
            encoder_main,
            str(socket_dir),
            ready["names"],
            str(output),
            enc_control_child,
            analysed_rx,
            enc_release_tx,
        )
        everyone = [decoder, analyser, encoder]
        children.keep_only(dec_control, ana_control, enc_control)
        attached = {
            "analyser": _receive(ana_control, everyone, "attach from the analyser"),
            "encoder": _receive(enc_control, everyone, "attach from the encoder"),
        }
        dec_control.send("start")
        decoded = _receive(dec_control, everyone, "the decoder's result")
        analysed = _receive(ana_control, everyone, "the analyser's result")
        encoded = _receive(enc_control, everyone, "the encoder's result")
        encoded.update(_receive(enc_control, everyone, "the encoder's check of its output"))
        children.join()
    seconds = encoded["finished"] - decoded["started"]
    return {
        "ready": ready,
        "attached": attached,
        "decoder": decoded,
        "analyser": analysed,
        "encoder": encoded,
        "seconds": seconds,
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
