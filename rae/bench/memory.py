"""Peak memory of one measured phase: the CUDA allocator's peak on a GPU, the process peak RSS on a CPU."""
from __future__ import annotations

import resource
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    """A ``VmHWM``/``VmRSS`` line of /proc/self/status in KiB (None off Linux)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to clear_refs); False if not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_mib`` and ``m.kind`` (what was measured).

    GPU: ``torch.cuda.max_memory_allocated`` during the block (tensors only, not the caching
    allocator's reserve). CPU: growth of the process peak resident set over the block, in MiB,
    which includes weights and optimizer state made inside it and allocator/library overhead.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = 0.0
        self.kind = ""
        self._start_kib = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda max_memory_allocated"
        elif _reset_peak_rss() and _status_kib("VmRSS") is not None:
            self._start_kib = _status_kib("VmRSS")
            self.kind = "cpu peak RSS growth (VmHWM - VmRSS at start)"
        else:
            self._start_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.kind = "cpu ru_maxrss growth (process-lifetime peak; later phases may read 0)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        peak = _status_kib("VmHWM") if self.kind.startswith("cpu peak") else None
        peak = peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak_mib = max(0, peak - self._start_kib) / 1024
