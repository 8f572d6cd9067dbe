"""The Aim backend of the tracker: one Aim run per experiment run, visible in `aim up`."""
from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from rae.registry import TRACKERS
from rae.tracking.tracker import Tracker

log = logging.getLogger(__name__)


class TrackerUnavailable(RuntimeError):
    """The Aim repo cannot be opened; raised before any work starts."""


def _open_repo(repo: str):
    from aim import Repo

    if repo.startswith("aim://"):
        return Repo(repo)
    path = Path(repo).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not (path / ".aim").exists():
            Repo.from_path(str(path), init=True)
        return Repo.from_path(str(path))
    except Exception as exc:  # aim raises a variety of IO errors here
        raise TrackerUnavailable(f"cannot open the Aim repo at '{path}': {exc}") from exc


@TRACKERS.register("aim")
class AimTracker(Tracker):
    """Writes to a local Aim repo (a folder) or a remote one (``aim://host:port``).

    System-stats threads and terminal capture are off: they outlive crashes and
    slow small runs. On close the run is indexed, so `Repo.query_runs` and the UI
    see it at once (Aim otherwise indexes only under `aim up`).
    """

    def __init__(
        self,
        repo: str = "runs",
        experiment: str | None = None,
        name: str | None = None,
        run_hash: str | None = None,
    ) -> None:
        from aim import Run

        self.repo_path = repo
        self._repo = _open_repo(repo)
        try:
            self._run = Run(
                run_hash=run_hash,
                repo=self._repo,
                experiment=experiment,
                system_tracking_interval=None,
                capture_terminal_logs=False,
                log_system_params=False,
            )
        except Exception as exc:
            raise TrackerUnavailable(f"cannot create an Aim run in '{repo}': {exc}") from exc
        if name:
            self._run.name = name
        self.name = name or self._run.hash
        self.hash = self._run.hash
        self._closed = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            self._run[key] = value

    def track(self, name: str, value: float, step: int, context: Mapping[str, Any] | None = None) -> None:
        self._run.track(float(value), name=name, step=int(step), context=dict(context or {}))

    def track_images(
        self,
        name: str,
        images: torch.Tensor,
        step: int,
        captions: Sequence[str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        from aim import Image

        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        captions = list(captions) if captions is not None else [""] * len(pixels)
        seq = [Image(p, caption=c) for p, c in zip(pixels, captions)]
        self._run.track(seq, name=name, step=int(step), context=dict(context or {}))

    def log_text(self, name: str, text: str, step: int = 0) -> None:
        from aim import Text

        self._run.track(Text(text), name=name, step=int(step))

    def add_tags(self, tags: Sequence[str]) -> None:
        for tag in tags:
            if tag and tag not in self._run.props.tags:
                self._run.add_tag(tag)

    def close(self, error: BaseException | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        if error is not None:
            self._run["status"] = "failed"
            self._run["error"] = "".join(traceback.format_exception(error))[-4000:]
            self.add_tags(["failed"])
        else:
            self._run["status"] = "finished"
        run_hash = self._run.hash
        self._run.close()
        if not self.repo_path.startswith("aim://"):
            self._index(run_hash)

    def _index(self, run_hash: str) -> None:
        from aim.sdk.index_manager import RepoIndexManager

        try:
            RepoIndexManager.get_index_manager(self._repo).index(run_hash)
        except Exception as exc:  # indexing is a convenience; `aim up` indexes too
            log.warning("could not index Aim run %s now (%s); `aim up` will index it", run_hash, exc)

