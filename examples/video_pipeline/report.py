"""The report: speed, what crossed process boundaries, what was negotiated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bufbroker import TraceStep, format_trace
from examples.video_pipeline.source import SourceFrame


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError


def _cpu(result: dict[str, Any]) -> float:
    """CPU seconds the three stages of a run used (every thread; imports and connecting included)."""
    return float(sum(result[stage]["cpu_seconds"] for stage in ("decoder", "analyser", "encoder")))


def bufbroker_crossings(result: dict[str, Any]) -> dict[str, int]:
    """Bytes and fds that crossed a process boundary in the bufbroker run (each counted by its sender)."""
    meters = [result[name]["meter"] for name in ("decoder", "analyser", "encoder")]
    return {
        "handoff": sum(m["link_bytes"] for m in meters),
        "handoff_messages": sum(m["link_messages"] for m in meters),
        "rpc": sum(m["rpc_bytes"] for m in meters),
        "rpc_calls": sum(sum(m["calls"].values()) for m in meters),
        "events": sum(m["event_bytes"] for m in meters),
        "event_count": sum(m["events"] for m in meters),
        "fds": sum(m["fds"] for m in meters),
    }


def format_report(
    source: Sequence[SourceFrame],
    source_seconds: float,
    result: dict[str, Any],
    piped: dict[str, Any] | None,
    fds: tuple[int, int, int],
    problems: list[str],
) -> str:
    frames = len(source)
    first, last = (source[0].width, source[0].height), (source[-1].width, source[-1].height)
    switch = next((f.number for f in source if (f.width, f.height) != first), None)
    decoder, ready = result["decoder"], result["ready"]
    native = ready["format"].partition(":")[0]
    pixel_bytes = decoder["pixel_bytes"]
    pids = result["pids"]
    lines = [
        f"bufbroker example video: {frames} frames, {first[0]}x{first[1]} -> {last[0]}x{last[1]} at frame {switch}, "
        f"stream {ready['stream']!r} of {ready['slots']} {ready['layout']['fourcc']} slots",
        f"  source: test pattern with the frame number as a barcode, encoded by PyAV (libx264) in {source_seconds:.1f} s",
        f"  stages, separate commands that found each other by stream name: decoder pid {pids['decoder']} "
        f"-> 'decoded' -> analyser pid {pids['analyser']} -> 'analysed' -> encoder pid {pids['encoder']} "
        "(which also reads 'decoded')",
        f"  decoder offers: {', '.join(ready['offers'])}; udmabuf: {ready['udmabuf']}",
        f"  decoder's format: PyAV decodes to {ready['decodes_to']}, so every slot offer carries "
        f"{ready['format']}; it can also produce {', '.join(ready['can_produce'][1:]) or 'nothing else'}"
        + (f"; the consumers renegotiated it to {decoder['negotiated']}" if decoder["negotiated"] != native else ""),
    ]
    for name, attached in result["attached"].items():
        lines.append(
            f"  {name} accepts segments, memfd with {', '.join(attached['accepts'])} (read-only) -> negotiated "
            f"{attached['map_type']}, {attached['format']}"
        )
        trace = [TraceStep(**step) for step in attached["trace"]]
        lines.extend("      " + line for line in format_trace(trace).splitlines())
    moves = decoder["moves"]
    if moves:
        lines.append(
            "  resolution change: "
            + "; ".join(
                f"stream.move() to {m['size'][0]}x{m['size'][1]} (generation {m['generation']}) before frame "
                f"{m['frame']}, {m['ms']:.1f} ms"
                for m in moves
            )
        )
        pool = ready["slots"]
        lines.append(
            f"      the SDK re-mapped: analyser {result['analyser']['maps'] - pool} times, encoder "
            f"{result['encoder']['maps'] - pool} times; regions still mapping the slots at the end: "
            f"{result['analyser']['mapped_regions']} and {result['encoder']['mapped_regions']} "
            "(one per slot: old pages let go)"
        )
    output = result["encoder"]["output"]
    in_order = sum(1 for i, s in enumerate(result["analyser"]["stats"]) if s["seq"] == i and s["number"] == i)
    lines.append(
        f"  checked: analyser read {in_order}/{frames} barcodes in order; encoded file "
        f"({_size(result['encoder']['output_bytes'])}) decodes to "
        f"{sum(1 for i, o in enumerate(output) if o['number'] == i)}/{frames} frames in order"
    )
    encoder = result["encoder"]
    copies = "; ".join(f"{count} copied: {reason}" for reason, count in encoder["copied"].items())
    lines.append(
        f"  encoder: {encoder['wrapped']}/{frames} frames handed to libx264 as PyAV frames over the slot (no copy)"
        + (f"; {copies}" if copies else "")
    )
    crossed = bufbroker_crossings(result)
    bb_fps = frames / result["seconds"]
    lines += [
        "",
        f"  {'':<38}{'bufbroker':>14}{'pipes (copy)':>16}",
    ]
    pipe_fps = piped and frames / piped["seconds"]
    pipe_bytes = piped and piped["decoder"]["pipe_bytes"] + piped["analyser"]["pipe_bytes"]
    bb_bytes = crossed["handoff"] + crossed["rpc"] + crossed["events"]
    lines += [
        f"  {'frames per second, end to end':<38}{bb_fps:>14.1f}{(f'{pipe_fps:.1f}' if piped else '-'):>16}",
        f"  {'pixel bytes decoded and handed over':<38}{_size(pixel_bytes):>14}{(_size(pixel_bytes) if piped else '-'):>16}",
        f"  {'bytes across process boundaries':<38}{_size(bb_bytes):>14}{(_size(pipe_bytes) if piped else '-'):>16}",
        f"  {'  of which pixels':<38}{'0 B':>14}{(_size(2 * pixel_bytes) if piped else '-'):>16}",
        f"  {'CPU seconds, three stages (+start-up)':<38}{_cpu(result):>14.2f}{(f'{_cpu(piped):.2f}' if piped else '-'):>16}",
    ]
    if piped:
        lines.append(
            f"  bufbroker vs pipes: {bb_fps / pipe_fps:.2f}x the frame rate, "
            f"{pipe_bytes / max(bb_bytes, 1):.0f}x fewer bytes across processes"
        )
    lines += [
        f"  bufbroker's crossings: stream link datagrams {_size(crossed['handoff'])} in "
        f"{crossed['handoff_messages']} messages (frames, releases, hellos, byes; none through the broker); "
        f"gRPC payloads {_size(crossed['rpc'])} in {crossed['rpc_calls']} calls; events {_size(crossed['events'])} "
        f"({crossed['event_count']}); {crossed['fds']} fds passed",
        f"  broker fds: {fds[0]} before, {fds[1]} after; its ledger holds {fds[2]} client fds",
    ]
    if problems:
        lines.append("  PROBLEMS:")
        lines.extend(f"    - {p}" for p in problems)
    else:
        lines.append("  every check passed")
    return "\n".join(lines)
