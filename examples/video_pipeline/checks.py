"""What a correct run looks like, as a list of problems (empty when all is well)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from examples.video_pipeline.source import SourceFrame

# Mean luma after two lossy encodes may drift a little from the original.
LUMA_TOLERANCE = 3.0


def bufbroker_problems(result: dict[str, Any], source: Sequence[SourceFrame]) -> list[str]:
    problems = []
    frames = len(source)
    sizes = [(f.width, f.height) for f in source]
    decoder = result["decoder"]
    if decoder["frames"] != frames or decoder["published"] != frames:
        problems.append(f"the decoder decoded {decoder['frames']} and published {decoder['published']} of {frames}")
    if not decoder["drained"] or not result["analyser"]["drained"]:
        problems.append("a stream still had frames out when its producer closed it")
    stats = result["analyser"]["stats"]
    if [s["seq"] for s in stats] != list(range(frames)):
        problems.append(
            f"the analyser saw frames {[s['seq'] for s in stats][:8]}..., not 0..{frames - 1} once each in order"
        )
    wrong = [(s["seq"], s["number"]) for s in stats if s["number"] != s["seq"]]
    if wrong:
        problems.append(f"the barcode read by the analyser disagrees with the frame order: (seq, number) {wrong[:5]}")
    if [tuple(s["size"]) for s in stats] != sizes:
        problems.append("the analyser saw frame sizes that differ from the source's")
    negotiated = decoder["negotiated"]
    if any(s["format"] != negotiated for s in stats):
        seen = sorted({s["format"] for s in stats})
        problems.append(f"the analyser saw frames in {seen}, the decoder wrote {negotiated}")
    for name in ("analyser", "encoder"):
        # Per slot, the pair of its attach: slots a renegotiation had already moved show the new one.
        formats = result["attached"][name]["formats"]
        if None in formats:
            problems.append(f"the {name}'s slots were negotiated {formats}: a slot without a (format, modifier) pair")
    drift = [
        (s["seq"], round(s["mean_luma"] - f.mean_luma, 2))
        for s, f in zip(stats, source)
        if abs(s["mean_luma"] - f.mean_luma) > LUMA_TOLERANCE
    ]
    if drift:
        problems.append(f"mean luma off by more than {LUMA_TOLERANCE} from the source: (seq, diff) {drift[:5]}")
    encoder = result["encoder"]
    problems.extend(encoder["problems"])
    if encoder["frames"] != frames:
        problems.append(f"the encoder encoded {encoder['frames']} frames, the source has {frames}")
    for name in ("analyser", "encoder"):
        if result[name]["skipped"]:
            problems.append(f"the {name} missed {result[name]['skipped']} frames of its streams")
    output = encoder["output"]
    if [o["number"] for o in output] != list(range(frames)):
        problems.append(f"the encoded file holds frames {[o['number'] for o in output][:8]}..., not 0..{frames - 1}")
    if [tuple(o["size"]) for o in output] != sizes:
        problems.append("the encoded file's frame sizes differ from the source's")
    pool = result["ready"]["slots"]
    for name in ("analyser", "encoder"):
        if result[name]["mapped_regions"] != pool:
            problems.append(
                f"the {name} maps the stream's memfds {result[name]['mapped_regions']} times, not once per slot"
            )
    return problems


def piped_problems(result: dict[str, Any], source: Sequence[SourceFrame]) -> list[str]:
    numbers = result["analyser"]["numbers"]
    if numbers != list(range(len(source))) or result["encoder"]["frames"] != len(source):
        return [f"the piped run saw frames {numbers[:8]}... and encoded {result['encoder']['frames']}"]
    return []
