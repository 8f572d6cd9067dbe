"""A pipeline: experiments run one after another in subfolders of one run, each reading what the
earlier ones wrote (through ``@run_file()`` paths), as the quickstart chains stats -> stage 1 ->
cache -> stage 2 -> samples -> metrics.

Rerunning an interrupted pipeline skips finished stages and resumes the unfinished one.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from rae.experiments.base import Experiment, RunContext, seed_everything
from rae.io import atomic_write_json
from rae.progress import format_duration, pipeline_stage
from rae.registry import EXPERIMENTS
from rae.tracking.prefixed import PrefixedTracker
from rae.weights import unwritten_folders

STAGE_DONE = "STAGE_DONE.json"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@EXPERIMENTS.register("pipeline")
class Pipeline(Experiment):
    """``stages``: {name: experiment}, run in order, each in ``<run folder>/<name>/``.

    Every stage logs into the pipeline's tracker run under ``<name>/`` and loads its weights just
    before it runs (a later stage's weights are files an earlier stage writes).
    """

    kind = "pipeline"

    def __init__(self, stages: dict[str, Experiment]) -> None:
        if not stages:
            raise ValueError("pipeline.stages is empty; expected {name: @experiment.<kind>(), ...}")
        for name, stage in stages.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(f"pipeline.stages: stage name {name!r} must be a folder name (letters, digits, _ . -)")
            if not isinstance(stage, Experiment):
                raise ValueError(f"pipeline.stages[{name!r}] must be an experiment (@experiment.<kind>()), "
                                 f"got {type(stage).__name__}")
        self.stages = dict(stages)

    def models(self) -> dict[str, nn.Module]:
        return {f"{name}.{model_name}": model for name, stage in self.stages.items()
                for model_name, model in stage.models().items()}

    def latent_shape(self) -> tuple[int, ...] | None:
        return next((shape for stage in self.stages.values() if (shape := stage.latent_shape())), None)

    def tags(self) -> list[str]:
        tags = [self.kind]
        for stage in self.stages.values():
            tags += [tag for tag in stage.tags() if tag not in tags]
        return tags

    def check(self, world_size: int) -> None:
        """Every stage's config checks, before the run folder is made; a failure names its stage."""
        for name, stage in self.stages.items():
            try:
                stage.check(world_size)
            except ValueError as exc:
                raise ValueError(f"pipeline stage {name!r}: {exc}") from exc

    def load_weights(self, allow_random: bool, log: logging.Logger) -> None:
        """Nothing up front: each stage loads its weights when its turn comes."""

    def run(self, ctx: RunContext) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        start = time.monotonic()
        for index, (name, stage) in enumerate(self.stages.items(), start=1):
            folder = ctx.run_dir / name
            marker = folder / STAGE_DONE
            with pipeline_stage(index, len(self.stages), name) as label:
                if marker.exists():
                    ctx.log.info("pipeline: %s already finished, skipping", label)
                    result = json.loads(marker.read_text())
                else:
                    later = {ctx.run_dir / n: n for n in list(self.stages)[index - 1:]
                             if not (ctx.run_dir / n / STAGE_DONE).exists()}
                    result = self._run_stage(ctx, name, stage, label, later)
            summary |= {f"{name}.{key}": value for key, value in result.items()}
        ctx.log.info("pipeline: all %d stages done in %s", len(self.stages), format_duration(time.monotonic() - start))
        return summary

    def _run_stage(self, ctx: RunContext, name: str, stage: Experiment, label: str,
                   unwritten: dict[Path, str]) -> dict[str, Any]:
        """Run one stage in its folder and mark it finished; returns its summary. Its weights load first,
        and a file it reads from ``unwritten`` (this and later stages' folders) is reported as not written yet."""
        folder = ctx.run_dir / name
        ctx.log.info("pipeline: %s (%s) in %s", label, stage.kind, folder)
        start = time.monotonic()
        folder.mkdir(parents=True, exist_ok=True)
        seed_everything(ctx.seed, ctx.accelerator.rank)
        with unwritten_folders(unwritten):
            stage.load_weights(ctx.allow_random_weights, ctx.log)
        result = stage.run(replace(ctx, run_dir=folder, tracker=PrefixedTracker(ctx.tracker, name)))
        result = {key: _plain(value) for key, value in (result or {}).items()}
        marker = folder / STAGE_DONE
        if ctx.accelerator.is_main:
            atomic_write_json(marker, result)
        ctx.accelerator.barrier()
        ctx.log.info("pipeline: %s done in %s", label, format_duration(time.monotonic() - start))
        return result


def _plain(value: Any) -> Any:
    """A summary value as JSON holds it: numbers and strings as they are, anything else as text."""
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
