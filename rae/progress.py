"""Progress of a long loop: done / total, elapsed time, rate and ETA, in one shared format.

Every experiment's loop (training steps, latent statistics, the latent cache, reconstructions,
samples) reports through `Progress`, so every long run prints the same line, e.g.::

    stage 2/6 stage1: step 25/300 (8%)  elapsed 1m20s  ETA 14m40s  0.31 steps/s  loss 0.1399 ...

as a plain log line at the loop's own cadence; where stderr is a terminal the main rank also
keeps a bar on the last line, redrawn in place as tqdm draws it (log lines print above it).
Inside a pipeline the line names the stage (``stage k/n name``), set by `pipeline_stage`.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from contextvars import ContextVar
from typing import Callable, Iterator, TextIO

BAR_WIDTH = 24
REDRAW_S = 0.2  # the bar is redrawn at most this often
_stage: ContextVar[str] = ContextVar("rae_pipeline_stage", default="")


@contextlib.contextmanager
def pipeline_stage(index: int, count: int, name: str) -> Iterator[str]:
    """While inside, progress lines open with ``stage index/count name``; yields that label."""
    label = f"stage {index}/{count} {name}"
    token = _stage.set(label)
    try:
        yield label
    finally:
        _stage.reset(token)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h03m``: short enough for a progress line."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Counts ``done`` of ``total`` units of one loop and reports elapsed time, rate and ETA.

    ``name`` (the experiment) opens each line, or inside a pipeline the stage's label in its place;
    ``what`` is counted (``step``, ``images``). ``done`` is where the loop starts (a resumed run
    starts past 0); the rate and ETA count only the work done since then. ``bar``: draw the
    in-place bar (the main rank's choice), drawn only when ``stream`` is a terminal. ``clock``
    is for tests.
    """

    def __init__(self, name: str, what: str, total: int, log: logging.Logger, unit: str = "images", done: int = 0,
                 bar: bool = True, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total < 0 or done < 0:
            raise ValueError(f"progress of {name} {what}: expected done >= 0 and total >= 0, got {done} / {total}")
        self.what, self.total, self.unit, self.log = what, total, unit, log
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.prefix = _stage.get() or name
        self.start_done = self.done = done
        self.start = clock()
        self._bar = bar and _is_terminal(self.stream)
        self._drawn_at: float | None = None
        self._guard: _ClearBar | None = None

    # ---- numbers ----
    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    @property
    def rate(self) -> float | None:
        """Units per second since the start, None before any."""
        elapsed, work = self.elapsed, self.done - self.start_done
        return work / elapsed if work > 0 and elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None while no rate is known."""
        rate = self.rate
        if self.done >= self.total:
            return 0.0
        return (self.total - self.done) / rate if rate else None

    def line(self, details: str = "") -> str:
        """``<name or stage>: <what> done/total (p%)  elapsed ..  ETA ..  rate  details``."""
        percent = 100 * self.done / self.total if self.total else 100.0
        eta = self.eta
        rate = self.rate
        parts = [f"{self.what} {self.done}/{self.total} ({percent:.0f}%)", f"elapsed {format_duration(self.elapsed)}",
                 f"ETA {format_duration(eta) if eta is not None else '?'}"]
        if rate is not None:
            parts.append(f"{rate:.3g} {self.unit}/s")
        if details:
            parts.append(details)
        return f"{self.prefix}: " + "  ".join(parts)

    # ---- reporting ----
    def update(self, done: int, details: str = "", log_line: bool = True) -> str:
        """Set the count; log the line (``log_line``) and redraw the bar; returns the line."""
        self.done = done
        text = self.line(details)
        if log_line:
            self._clear()
            self.log.info(text)
        self._draw()
        return text

    def close(self) -> None:
        """End the bar's line (the last state stays on screen) and stop watching the log."""
        if self._bar and self._drawn_at is not None:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
        self._drawn_at = None
        self._bar = False
        self._watch(False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the terminal bar ----
    def _draw(self, force: bool = False) -> None:
        if not self._bar:
            return
        now = self.clock()
        if not force and self._drawn_at is not None and now - self._drawn_at < REDRAW_S and self.done < self.total:
            return
        filled = BAR_WIDTH * min(self.done, self.total) // max(self.total, 1)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r\033[K[{bar}] {self.line()}")
        self.stream.flush()
        self._drawn_at = now
        self._watch(True)

    def _clear(self) -> None:
        """Wipe the bar's line, so that a log line takes its place; the next update redraws it."""
        if self._drawn_at is not None:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn_at = None

    def _watch(self, on: bool) -> None:
        """While the bar is on screen, any log record written to the same stream wipes it first."""
        handlers = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is self.stream]
        if on and self._guard is None:
            self._guard = _ClearBar(self)
            for handler in handlers:
                handler.addFilter(self._guard)
        elif not on and self._guard is not None:
            for handler in handlers:
                handler.removeFilter(self._guard)
            self._guard = None


class _ClearBar(logging.Filter):
    """Wipes a progress bar before its handler writes a record (lets every record through)."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress._clear()
        return True


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
