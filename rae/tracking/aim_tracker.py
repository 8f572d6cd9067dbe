"""The Aim backend of the tracker: one Aim run per experiment run, visible in `aim up`."""
from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from rae.registry import TRACKERS
from rae.tracking.tracker import Tracker
from rae.tracking.values import plain

log = logging.getLogger(__name__)
logging.getLogger("aim").setLevel(logging.WARNING)  # Aim reports every lock and index step at INFO

ERROR_CHARS = 4000  # the tail of a traceback kept on a failed run: where it went wrong
END_TAGS = ("failed", "interrupted")


class TrackerUnavailable(RuntimeError):
    """The Aim repo cannot be opened or written; raised before any work starts."""


def open_repo(repo: str) -> Any:
    """An Aim ``Repo``: a local folder (made, with its ``.aim`` inside, if missing) or ``aim://host:port``."""
    from aim import Repo

    if repo.startswith("aim://"):
        try:
            return Repo(repo)
        except Exception as exc:  # aim raises connection and protocol errors of many types
            raise TrackerUnavailable(
                f"cannot reach the Aim server '{repo}' ({exc}); expected a running `aim server` there"
            ) from exc
    path = Path(repo).expanduser().resolve()
    problem = _unusable_folder(path)
    try:
        if problem:
            raise OSError(problem)
        path.mkdir(parents=True, exist_ok=True)
        return Repo.from_path(str(path), init=not (path / ".aim").is_dir())
    except Exception as exc:  # aim raises a variety of IO and database errors here
        raise TrackerUnavailable(
            f"cannot open the Aim repo at '{path}': {exc}. Expected a writable folder (made if missing) "
            f"or aim://host:port; set `run.run_root` (or `run.tracker`) to one"
        ) from exc


def _unusable_folder(path: Path) -> str | None:
    """Why ``path`` cannot hold an Aim repo, or None when it can (as far as can be told up front)."""
    if path.exists() and not path.is_dir():
        return "it is a file, not a folder"
    if (path / ".aim").exists() and not (path / ".aim").is_dir():
        return "its '.aim' is a file, not Aim's folder"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"'{existing}' is a file, so no folder can be made inside it"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"'{existing}' is not writable"
    return None


@TRACKERS.register("aim")
class AimTracker(Tracker):
    """Writes to a local Aim repo (a folder) or a remote one (``aim://host:port``).

    The run carries a ``status`` param: "running", then "finished", "failed" or
    "interrupted"; an ended-badly run also gets that word as a tag and its error text.
    Resuming a run (``run_hash``) clears what an earlier attempt left there.
    System-stats threads and terminal capture are off: they outlive crashes and slow
    small runs. On close the run is indexed, so `Repo.query_runs` and the UI see it at
    once (Aim otherwise indexes only under `aim up`).
    """

    def __init__(
        self,
        repo: str = "runs",
        experiment: str | None = None,
        name: str | None = None,
        run_hash: str | None = None,
    ) -> None:
        from aim import Run
        from aim.sdk.errors import RunLockingError

        self.repo_path = str(repo)
        self._repo = open_repo(self.repo_path)
        if run_hash and not self._repo.run_exists(run_hash):
            log.warning("Aim run %s is not in %s any more; starting a new Aim run", run_hash, self.repo_path)
            run_hash = None
        try:
            self._run = Run(
                run_hash=run_hash,
                repo=self._repo,
                experiment=experiment,
                system_tracking_interval=None,
                capture_terminal_logs=False,
                log_system_params=False,
            )
        except RunLockingError as exc:
            raise TrackerUnavailable(f"Aim run {run_hash} is held by another live process: {exc}") from exc
        except Exception as exc:  # aim raises IO and database errors of many types
            raise TrackerUnavailable(f"cannot create an Aim run in '{self.repo_path}': {exc}") from exc
        if name:
            self._run.name = name
        self.name = name or self._run.hash
        self.hash = self._run.hash
        self._closed = False
        self._start()

    def _start(self) -> None:
        self._run["status"] = "running"
        if self._run.get("error") is not None:
            del self._run["error"]
        for tag in END_TAGS:
            if tag in self._run.tags:
                self._run.remove_tag(tag)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            self._run[key] = plain(value)

    def track(self, name: str, value: float, step: int, context: Mapping[str, Any] | None = None) -> None:
        self._run.track(float(value), name=name, step=int(step), context=dict(context or {}))

    def track_images(self, name: str, images: torch.Tensor, step: int, captions: Sequence[str] | None = None,
                     context: Mapping[str, Any] | None = None) -> None:
        from aim import Image

        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"track_images('{name}'): expected a (B, 3, H, W) or (B, 1, H, W) batch in [0, 1], "
                f"got shape {tuple(images.shape)}"
            )
        captions = list(captions) if captions is not None else [""] * len(images)
        if len(captions) != len(images):
            raise ValueError(f"track_images('{name}'): {len(captions)} captions for {len(images)} images")
        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        if pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        seq = [Image(p, caption=c) for p, c in zip(pixels, captions)]
        self._run.track(seq, name=name, step=int(step), context=dict(context or {}))

    def log_text(self, name: str, text: str, step: int = 0) -> None:
        from aim import Text

        self._run.track(Text(text), name=name, step=int(step))

    def add_tags(self, tags: Sequence[str]) -> None:
        present = set(self._run.tags)
        for tag in tags:
            if tag and tag not in present:
                self._run.add_tag(tag)
                present.add(tag)

    def close(self, error: BaseException | None = None) -> None:
        """Record how the run ended, close it, index it; never raises over the run's own error."""
        if self._closed:
            return
        self._closed = True
        try:
            self._record_end(error)
        except Exception:  # a tracking failure must not hide the experiment's outcome
            log.exception("could not record the end of Aim run %s", self.hash)
        finally:
            self._run.close()
        if not self.repo_path.startswith("aim://"):
            self._index(self.hash)

    def _record_end(self, error: BaseException | None) -> None:
        if error is None:
            self._run["status"] = "finished"
            return
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        self._run["status"] = status
        self._run["error"] = "".join(traceback.format_exception(error))[-ERROR_CHARS:]
        self.add_tags([status])

    def _index(self, run_hash: str) -> None:
        from aim.sdk.index_manager import RepoIndexManager

        try:
            RepoIndexManager.get_index_manager(self._repo).index(run_hash)
        except Exception as exc:  # indexing is a convenience; `aim up` indexes too
            log.warning("could not index Aim run %s now (%s); `aim up` will index it", run_hash, exc)
