"""`bufbroker example video`: a real video pipeline over shared buffers (runs from a source checkout)."""

from __future__ import annotations

import argparse

from bufbroker_broker.cli.source_tree import import_from_checkout


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    example = commands.add_parser(
        "example",
        help="run an example pipeline end to end and print its report",
        description="video: a PyAV decoder, an analyser and an encoder, three separate commands that find "
        "each other by stream name through a broker in a temp dir, pass frames zero-copy through bufbroker "
        "streams ('decoded', 'analysed'); halfway the video changes resolution and the decoder moves its "
        "stream (stream.move); then the same pipeline runs with frames copied through pipes. "
        "Needs PyAV (pip install -e '.[video]') and a source checkout. See examples/video_pipeline/README.md.",
    )
    example.add_argument("name", choices=["video"], help="which example")
    example.add_argument("--frames", type=int, default=300, help="frames in the source video (default 300)")
    example.add_argument("--width", type=int, default=1280, help="width of the first half (default 1280)")
    example.add_argument("--height", type=int, default=720, help="height of the first half (default 720)")
    example.add_argument(
        "--switch-to", default=None, metavar="WxH", help="size of the second half (default 1.5 times the first)"
    )
    example.add_argument("--quick", action="store_true", help="48 frames, 320x180 then 480x270")
    example.add_argument("--no-compare", action="store_true", help="skip the run with frames copied through pipes")


def run(args: argparse.Namespace) -> int:
    import_from_checkout("examples", "example")
    from examples.video_pipeline.example import run_from_args

    return int(run_from_args(args))
