"""What both benchmark commands share: the machine description, the one-line JSON record and the exit codes."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any, Callable, Sequence

import torch


def machine() -> dict[str, Any]:
    """Where the figures come from: device name, torch version, threads."""
    info = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cpu": _cpu_model()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_record(prefix: str, header: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The run's record (header, fields, the machine and the UTC time) printed as one JSON line after ``prefix``."""
    record = {**header, **fields, "machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(prefix + json.dumps(record))
    return record


def command_main(name: str, parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
                 run: Callable[[argparse.Namespace], object], errors: tuple[type[Exception], ...],
                 argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run: 0 done, 2 with ``name: message`` on stderr for one of the expected ``errors``."""
    args = parse_args(argv)
    try:
        run(args)
    except errors as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    return 0
