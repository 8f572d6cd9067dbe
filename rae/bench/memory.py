"""Peak memory of one measured phase: the CUDA allocator's peak on a GPU, the process peak RSS on a CPU."""
from __future__ import annotations

import resource
import threading
from pathlib import Path
from typing import Callable

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
SAMPLE_SECONDS = 0.001
RESET_SLACK_KIB = 8 * 1024  # a reset mark further than this above the resident set did not take


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
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to clear_refs); True only if the mark moved to now.

    Some sandboxes (gVisor, containers with a restricted /proc) refuse the write or accept it and
    keep the old mark: the mark is read back, and a reset that left it far above the resident set
    counts as not done.
    """
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    mark, resident = _status_kib("VmHWM"), _status_kib("VmRSS")
    return mark is not None and resident is not None and mark - resident <= RESET_SLACK_KIB


class _RssSampler:
    """The largest ``VmRSS`` read every millisecond on a background thread (where the peak mark cannot be reset)."""

    def __init__(self) -> None:
        self.peak_kib = _status_kib("VmRSS") or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="rss-sampler", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak_kib = max(self.peak_kib, _status_kib("VmRSS") or 0)

    def stop(self) -> int:
        """Stop watching; the peak in KiB, the last reading included."""
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, _status_kib("VmRSS") or 0)
        return self.peak_kib


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_mib`` and ``m.kind`` (what was measured).

    GPU: ``torch.cuda.max_memory_allocated`` during the block (tensors only, not the caching
    allocator's reserve). CPU: growth of the process peak resident set over the block, in MiB,
    which includes weights and optimizer state made inside it and allocator/library overhead;
    read from the kernel's reset peak mark where it can be reset, else sampled every millisecond.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = 0.0
        self.kind = ""
        self._start_kib = 0
        self._read_peak_kib: Callable[[], int] = _lifetime_peak_kib

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda max_memory_allocated"
            return self
        resident = _status_kib("VmRSS")
        if _reset_peak_rss():
            self._start_kib, self._read_peak_kib = _status_kib("VmRSS"), lambda: _status_kib("VmHWM")
            self.kind = "cpu peak RSS growth (VmHWM - VmRSS at start)"
        elif resident is not None:
            self._start_kib, self._read_peak_kib = resident, _RssSampler().stop
            self.kind = (f"cpu peak RSS growth (VmRSS sampled every {SAMPLE_SECONDS * 1e3:g} ms; "
                         "the peak mark cannot be reset here)")
        else:
            self._start_kib = _lifetime_peak_kib()
            self.kind = "cpu ru_maxrss growth (process-lifetime peak; later phases may read 0)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self.peak_mib = max(0, self._read_peak_kib() - self._start_kib) / 1024


def _lifetime_peak_kib() -> int:
    """The process's peak resident set since it started, in KiB (Linux's ``ru_maxrss`` unit)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
