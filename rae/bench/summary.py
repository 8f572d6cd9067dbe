"""The summary `tools/gpu_check.sh` prints: the JSON lines of its bench runs, read back from their logs.

``python -m rae.bench.summary LOG...`` reads every ``BENCH_JSON`` (tools/bench.py) and
``VERSUS_JSON`` (tools/bench_vs_reference.py) line of the logs and prints training speed, MFU,
memory and largest batch, sampling speed with the projected FID-50k time, and the side-by-side
ratios against the issue's targets (training >= 1.5x, sampling >= 2x the release).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from rae.bench.cli import JSON_PREFIX as BENCH_PREFIX
from rae.bench.versus import JSON_PREFIX as VERSUS_PREFIX

TARGETS = {"train": 1.5, "sample_cfg": 2.0, "sample_cfg_interval": 2.0, "sample_ag": 2.0}


def read_records(paths: Iterable[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(bench records, versus records) from the logs, in the order they appear; missing logs are skipped."""
    bench, versus = [], []
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(BENCH_PREFIX):
                bench.append(json.loads(line[len(BENCH_PREFIX):]))
            elif line.startswith(VERSUS_PREFIX):
                versus.append(json.loads(line[len(VERSUS_PREFIX):]))
    return bench, versus


def _bench_lines(record: dict[str, Any]) -> list[str]:
    lines = []
    train = record["results"].get("train")
    if train:
        lines.append(
            f"training {record['config']} ({record['precision']}, compile={record['compile']}, batch "
            f"{train['batch_size']}): {train['images_per_s']:.1f} img/s, MFU {train['mfu']:.1%} of the measured "
            f"peak {record['peak_flops'] / 1e12:.0f} TFLOP/s, peak memory {train['peak_memory_mib'] / 1024:.1f} GiB")
    largest = record.get("max_train_batch")
    if largest:
        lines.append(f"largest training batch per device: {largest['batch']} ({largest['note']})")
    return lines


def _versus_lines(record: dict[str, Any]) -> list[str]:
    lines = []
    results, shapes = record["results"], record["shapes"]
    body = "x".join(str(v) for v in shapes["body"])
    for what, m in results.items():
        speeds = ", ".join(f"{side} {ips:.2f} img/s" for side, ips in m["images_per_s"].items())
        lines.append(f"{what} (body {body}, batch {m['batch_size']}, {record['precision']}, "
                     f"{record['device']}): {speeds}")
        for side, r in m["ratios"].items():
            target = TARGETS.get(what)
            verdict = "" if target is None else f"; target x{target}: {'met' if r['median'] >= target else 'NOT met'}"
            lines.append(f"    {record['sides'][0]}/{side}: x{r['median']:.2f} [{r['low']:.2f}, {r['high']:.2f}] "
                         f"over {r['rounds']} rounds{verdict}")
    for side, per in record.get("fid50k_hours", {}).items():
        lines.append(f"FID-50k sampling + decoding on one device, {side}: "
                     + ", ".join(f"{k} {v:.2f} h ({v / 8:.2f} h on 8)" for k, v in per.items()))
    return lines


def summary(paths: Sequence[Path]) -> str:
    """The summary text of every record in ``paths``."""
    bench, versus = read_records(paths)
    lines = ["== summary =="]
    if not bench and not versus:
        lines.append("no benchmark finished (no BENCH_JSON / VERSUS_JSON lines in the logs)")
    for record in bench:
        lines.extend(_bench_lines(record))
    for record in versus:
        lines.extend(_versus_lines(record))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary of the logs named on the command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    print(summary([Path(a) for a in args]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
