"""The shared progress line: elapsed time, rate and ETA, the pipeline stage, the terminal bar."""
from __future__ import annotations

import io
import logging

import pytest
import torch
from torch import nn

from rae.accelerator import Accelerator
from rae.experiments.base import RunContext
from rae.progress import Progress, format_duration, pipeline_stage
from rae.tracking.tracker import Tracker
from rae.train.session import TrainingSession


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_duration_is_short_at_every_scale():
    assert [format_duration(s) for s in (0, 42.4, 185, 7380, -3)] == ["0s", "42s", "3m05s", "2h03m", "0s"]


def test_the_line_carries_elapsed_time_rate_and_eta(caplog):
    clock = Clock()
    progress = Progress("sample", "images", 100, logging.getLogger("rae"), done=20, clock=clock)
    assert progress.line() == "sample: images 20/100 (20%)  elapsed 0s  ETA ?"
    clock.now += 30  # 30 images in 30 s (the 20 done before this start do not count): 50 left, 50 s
    with caplog.at_level(logging.INFO, logger="rae"):
        line = progress.update(50, "on rank 0")
    assert line == "sample: images 50/100 (50%)  elapsed 30s  ETA 50s  1 images/s  on rank 0"
    assert caplog.messages == [line]
    assert progress.update(100, log_line=False).endswith("elapsed 30s  ETA 0s  2.67 images/s")


def test_inside_a_pipeline_the_line_names_the_stage_k_of_n():
    with pipeline_stage(2, 6, "stage1") as label:
        inside = Progress("stage1", "step", 10, logging.getLogger("rae"))
    assert label == "stage 2/6 stage1"
    assert inside.line().startswith("stage 2/6 stage1: step 0/10 (0%)")
    assert Progress("stage1", "step", 10, logging.getLogger("rae")).line().startswith("stage1: step 0/10")


def test_a_terminal_gets_a_bar_redrawn_in_place_and_a_log_only_the_plain_lines():
    clock, terminal, log_file = Clock(), Terminal(), io.StringIO()
    bar = Progress("x", "images", 4, logging.getLogger("rae"), stream=terminal, clock=clock)
    plain = Progress("x", "images", 4, logging.getLogger("rae"), stream=log_file, clock=clock)
    for done in (1, 2):
        clock.now += 1
        bar.update(done, log_line=False)
        plain.update(done, log_line=False)
    bar.close()
    plain.close()
    assert log_file.getvalue() == ""
    drawn = terminal.getvalue()
    assert drawn.startswith("\r\033[K[######------------------] x: images 1/4 (25%)  elapsed 1s  ETA 3s")
    assert "[############------------] x: images 2/4 (50%)  elapsed 2s  ETA 2s" in drawn and drawn.endswith("\n")


def test_a_log_record_wipes_the_bar_first_so_it_prints_on_a_line_of_its_own():
    terminal = Terminal()
    handler = logging.StreamHandler(terminal)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        clock = Clock()
        progress = Progress("x", "images", 4, logging.getLogger("rae"), stream=terminal, clock=clock)
        clock.now += 1
        progress.update(1, log_line=False)
        logging.getLogger("rae.other").warning("something else")
        progress.close()
        assert handler.filters == []
    finally:
        root.removeHandler(handler)
    assert terminal.getvalue().endswith("x: images 1/4 (25%)  elapsed 1s  ETA 3s  1 images/s\r\033[Ksomething else\n")


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="progress of sample images: expected done >= 0"):
        Progress("sample", "images", 10, logging.getLogger("rae"), done=-1)


def test_a_training_session_logs_its_steps_with_an_eta(tmp_path, caplog):
    model = nn.Linear(2, 1)
    ctx = RunContext(Accelerator(torch.device("cpu")), Tracker(), tmp_path, log=logging.getLogger("rae"))
    session = TrainingSession(ctx, {"model": model}, total_steps=4, log_every=2, checkpoint_every=10, name="stage2")
    with caplog.at_level(logging.INFO, logger="rae"):
        while not session.done:
            session.end_step({"loss": torch.tensor(0.5)}, images=8)
    lines = [m for m in caplog.messages if "step" in m]
    assert [line.split("  ")[0] for line in lines] == ["stage2: step 2/4 (50%)", "stage2: step 4/4 (100%)"]
    assert all("elapsed " in line and "ETA " in line and "loss 0.5" in line for line in lines)
    assert "ETA 0s" in lines[-1]
