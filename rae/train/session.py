"""The bookkeeping every training experiment shares: resume, logging cadence, checkpoints.

A training loop owns its step (what is forward, what is backward); the session owns
everything around it, so stage 1, stage 2 and REPA resume, log and checkpoint alike.
Resume is "run the same command again": the run folder's newest checkpoint restores every
stateful object, the RNG and the data position, and training continues where it stopped.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

import torch

from rae.progress import Progress
from rae.run_context import RunContext
from rae.train.checkpoint import Checkpointer
from rae.train.rng import rng_state, set_rng_state
from rae.train.step import check_finite


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class RunSetting:
    """A setting that fixes the layout of a checkpoint's state (e.g. sharded training keys the
    optimiser state by parameter name): saved with it, and a resume with another value is refused."""

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["value"] != self.value:
            raise ValueError(f"the checkpoint was written with {self.name} = {state['value']!r}, but this run has "
                             f"{self.value!r}: resume it with the same setting")


class TrainingSession:
    """Step counter, metric averaging, throughput, peak memory, periodic checkpoints, exact resume.

    ``state`` names every object whose state a checkpoint must hold (models, EMA, optimisers,
    schedulers, discriminator, data stream). Only the main rank writes; every rank resumes.
    ``name`` opens the progress line (``stage1: step 25/300 (8%)  elapsed ..  ETA ..  loss ..``).
    """

    def __init__(
        self,
        ctx: RunContext,
        state: dict[str, Stateful],
        total_steps: int,
        log_every: int = 50,
        checkpoint_every: int = 1000,
        keep_checkpoints: int = 2,
        keep_every: int | None = None,
        name: str = "train",
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if log_every < 1 or checkpoint_every < 1:
            raise ValueError("log_every and checkpoint_every must be positive")
        self.ctx = ctx
        self.state = state
        self.total_steps = total_steps
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.checkpointer = Checkpointer(ctx.run_dir / "checkpoints", keep=keep_checkpoints, keep_every=keep_every)
        self.step = 0
        self.images = 0
        self._sums: dict[str, torch.Tensor] = {}
        self._window_steps = 0
        self._window_images = 0
        self._window_start = time.perf_counter()
        self.last_metrics: dict[str, float] = {}
        self.name = name
        self.progress = self._new_progress()

    def _new_progress(self) -> Progress:
        """Elapsed time and ETA from the current step (a resumed run times only its own steps)."""
        return Progress(self.name, "step", self.total_steps, self.ctx.log, unit="steps", done=self.step,
                        bar=self.ctx.accelerator.is_main)

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def resume(self) -> bool:
        """Restore the newest checkpoint of this run folder, if any; True when resumed."""
        checkpoint = self.checkpointer.load_latest(map_location="cpu")
        if checkpoint is None:
            return False
        missing = sorted(set(self.state) - set(checkpoint["state"]))
        if missing:
            raise ValueError(
                f"checkpoint in {self.checkpointer.folder} lacks state for {missing}; "
                "it was written by a different experiment"
            )
        for name, obj in self.state.items():
            obj.load_state_dict(checkpoint["state"][name])
        self.step, self.images = int(checkpoint["step"]), int(checkpoint["images"])
        self._load_window(checkpoint.get("window"))
        set_rng_state(checkpoint["rng"])
        self.progress = self._new_progress()
        self.ctx.log.info("resumed from step %d (%d images) in %s", self.step, self.images, self.ctx.run_dir)
        return True

    def end_step(self, metrics: dict[str, torch.Tensor], images: int, scalars: dict[str, float] | None = None) -> None:
        """Record one optimiser step; sync, check and log every ``log_every``; checkpoint on schedule.

        ``metrics`` stay on the device until a log step (no host sync inside the loop);
        ``images`` counts the global batch; ``scalars`` are host values such as the lr.
        """
        self.step += 1
        self.images += images
        self._window_steps += 1
        self._window_images += images
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + value.detach().float()
        if self.step % self.log_every == 0 or self.done:
            self._log(scalars or {})
        else:
            self.progress.update(self.step, log_line=False)  # the terminal bar only
        if self.step % self.checkpoint_every == 0 or self.done:
            self.save()
        if self.done:
            self.progress.close()

    def _mean_over_ranks(self) -> dict[str, float]:
        """The window's metrics averaged over steps and ranks: every rank logs and checks the same
        values, so a NaN on any rank stops all of them at the same step instead of hanging the others."""
        keys = sorted(self._sums)
        if not self.ctx.accelerator.distributed or not keys:
            return {k: float(self._sums[k]) / self._window_steps for k in keys}
        stacked = torch.stack([torch.as_tensor(self._sums[k], dtype=torch.float32) for k in keys])
        torch.distributed.all_reduce(stacked)
        stacked /= self.ctx.accelerator.world_size * self._window_steps
        return dict(zip(keys, stacked.tolist()))

    def _log(self, scalars: dict[str, float]) -> None:
        averaged = self._mean_over_ranks()
        check_finite(averaged, self.step)
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        averaged["images_per_s"] = self._window_images / elapsed
        device = self.ctx.accelerator.device
        if device.type == "cuda":
            averaged["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        averaged.update(scalars)
        self.ctx.tracker.track_dict(averaged, self.step, {"subset": "train"})
        self.progress.update(self.step, "  ".join(f"{k} {v:.4g}" for k, v in averaged.items()))
        self.last_metrics = averaged
        self._sums, self._window_steps, self._window_images = {}, 0, 0
        self._window_start = time.perf_counter()

    def _window_state(self) -> dict[str, Any]:
        """The metrics averaged since the last log, so a resumed run logs the very values an
        uninterrupted one would. Every rank keeps its own sums; the rank mean is saved (a later
        all-reduce of it over any number of ranks gives the same averages)."""
        sums = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in self._sums.items()}
        if sums and self.ctx.accelerator.distributed:
            keys = sorted(sums)
            stacked = torch.stack([sums[k] for k in keys])
            torch.distributed.all_reduce(stacked)
            stacked /= self.ctx.accelerator.world_size
            sums = dict(zip(keys, stacked))
            self._sums = dict(sums)  # the same sum over ranks as before, now known to every checkpoint reader
        return {"sums": {k: v.detach().cpu() for k, v in sums.items()}, "steps": self._window_steps,
                "images": self._window_images}

    def _load_window(self, window: dict[str, Any] | None) -> None:
        if window is None:  # a checkpoint written before windows were saved: the first log averages fewer steps
            return
        device = self.ctx.accelerator.device
        self._sums = {k: v.to(device) for k, v in window["sums"].items()}
        self._window_steps, self._window_images = int(window["steps"]), int(window["images"])

    def save(self) -> None:
        """Checkpoint every stateful object, the RNG and the progress (main rank writes).

        Every rank builds the state: a sharded model's state dict is a collective that gathers it.
        """
        if self._sums:
            check_finite({k: float(v) for k, v in self._sums.items()}, self.step)
        state = {name: obj.state_dict() for name, obj in self.state.items()}
        window = self._window_state()
        if self.ctx.accelerator.is_main:
            self.checkpointer.save(
                {"step": self.step, "images": self.images, "rng": rng_state(), "state": state, "window": window},
                self.step,
            )
        self.ctx.accelerator.barrier()
