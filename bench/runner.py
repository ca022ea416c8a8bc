"""`bufbroker bench [--quick] [--json PATH]`: run the four groups, print a table, write JSON.

JSON: {"machine": {...}, "quick": bool, "results": [{"name", "value", "unit",
"baseline", "baseline_value", "ratio", ["target", "met", "note", ...]}, ...]}.
A group that fails still emits its result names, with value null and the
reason in "error", so a reader (and the smoke test) always sees every name.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Every result the issue names, by group: the smoke test checks these.
REQUIRED = {
    "control_plane": ["attach_map_p50_over_echo", "map_existing_p50_over_echo", "attach_map_p99_over_echo_p99"],
    "handoff": [
        "handoff_64MiB_grpc_bytes_over_bufbroker",
        "handoff_flatness_256MiB_over_4KiB",
        "consumer_read_bandwidth_over_producer",
    ],
    "scale": ["attach_p50_10k_over_10", "broker_rss_bytes_per_buffer", "broker_fds_over_buffers_plus_sessions"],
    "concurrency": [
        "concurrent_cycles_per_s",
        "concurrent_p99_ms",
        "concurrent_errors",
        "concurrent_broker_fds_leaked",
    ],
    "streams": [
        "streams_handoff_p50_over_floor",
        "streams_handoff_p50_over_iceoryx2",
        "streams_p99_over_p50",
        "streams_fps_over_floor",
        "streams_fps_over_grpc_bytes",
        "streams_1to4_p50_over_1to1",
        "streams_broker_cpu_us_per_frame",
    ],
}
RESULT_KEYS = ("name", "value", "unit", "baseline", "baseline_value", "ratio")


def run(
    quick: bool = False,
    json_path: Path | None = None,
    only: list[str] | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    from bench import common, groups
    from bufbroker_broker.cli.launch import stop_broker
    from bufbroker_broker.server.daemon import raise_fd_limit

    raise_fd_limit()  # 10,000 buffers in the scale group
    started = time.monotonic()
    machine = common.machine_info()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bufbroker-bench-") as tmp:
        workdir = Path(tmp)
        echo_path = workdir / "echo.sock"
        echo = common.start_echo_server(echo_path)
        try:
            plan = {
                "control_plane": lambda: groups.control_plane(workdir, echo_path, quick, log),
                "handoff": lambda: groups.handoff(workdir, quick, log),
                "scale": lambda: groups.scale(workdir, quick, log),
                "concurrency": lambda: groups.concurrency(workdir, echo_path, quick, log),
                "streams": lambda: groups.streams(workdir, quick, log),
            }
            for group, fn in plan.items():
                if only and group not in only:
                    continue
                log(f"{group} ...")
                t0 = time.monotonic()
                try:
                    got = fn()
                except Exception as error:
                    log(traceback.format_exc())
                    got = [
                        groups.result(name, None, "", "", None) | {"error": f"{type(error).__name__}: {error}"}
                        for name in REQUIRED[group]
                    ]
                for entry in got:
                    entry["group"] = group
                results.extend(got)
                log(f"{group} done in {time.monotonic() - t0:.1f} s")
        finally:
            stop_broker(echo)  # SIGTERM, then SIGKILL if it hangs
    machine["bench_seconds"] = round(time.monotonic() - started, 1)
    report = {"machine": machine, "quick": quick, "results": results}
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def table(report: dict[str, Any], only_targets: bool = False) -> str:
    """A Markdown table: the README carries the full run's."""
    lines = ["| result | value | baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    for entry in report["results"]:
        target = entry.get("target")
        if only_targets and not target:
            continue
        goal = f"{target['on']} {target['op']} {_fmt(target['bound'])}" if target else ""
        met = {True: "yes", False: "**no**", None: ""}[entry.get("met")] if target else ""
        value = f"{_fmt(entry['value'])} {entry['unit']}".strip()
        base = f"{entry['baseline']} = {_fmt(entry['baseline_value'])}" if entry.get("baseline") else ""
        lines.append(f"| {entry['name']} | {value} | {base} | {_fmt(entry['ratio'])} | {goal} | {met} |")
    m = report["machine"]
    lines.append("")
    lines.append(
        f"Machine: {m.get('cpu_model', '?')}, {m.get('cpus_usable')} usable CPUs, "
        f"{(m.get('mem_total_bytes') or 0) / 2**30:.0f} GiB, Linux {m.get('kernel')}, Python {m.get('python')}, "
        f"grpcio {m.get('grpcio', '?')}; load {m.get('loadavg')}; {m.get('timestamp_utc')}"
        + (" (quick run)" if report.get("quick") else "")
    )
    return "\n".join(lines)


def missing(report: dict[str, Any]) -> list[str]:
    """Required names absent from the report, or entries lacking a key."""
    names = {entry.get("name"): entry for entry in report.get("results", [])}
    problems = [name for group in REQUIRED.values() for name in group if name not in names]
    for name, entry in names.items():
        problems += [f"{name}.{key}" for key in RESULT_KEYS if key not in entry]
    return problems


def main(args: argparse.Namespace) -> int:
    only = getattr(args, "only", None)
    report = run(quick=args.quick, json_path=args.json, only=only)
    print(table(report))
    absent = missing(report) if not only else []
    failed = [e["name"] for e in report["results"] if "error" in e]
    if absent or failed:
        print(f"bufbroker bench: incomplete: missing {absent}, failed {failed}", file=sys.stderr)
        return 1
    return 0


def cli(argv: list[str] | None = None) -> int:
    """`python -m bench ARGS` is `bufbroker bench ARGS` (one parser: bufbroker_broker.cli.bench)."""
    from bufbroker_broker.cli import main as bufbroker_main

    return bufbroker_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(cli())
