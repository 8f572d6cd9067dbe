"""The one runner: parse gin, build the bound experiment, hand it a context and a tracker, run it.

Exit codes: 0 done; 2 configuration error or unreadable input file (one paragraph, no traceback);
1 failure while running; 130 / 143 interrupted by SIGINT / SIGTERM (rerunning the command resumes).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util  # gin needs it imported before a missing include is reported
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import gin
from rae import plugins
from rae.accelerator import Accelerator, make_accelerator, release
from rae.config_errors import ConfigError, check_bound_types, raise_as_config_error
from rae.experiments.base import (
    Experiment,
    RunContext,
    count_parameters,
    seed_everything,
)
from rae.io import UnreadableFile
from rae.registry import REGISTRIES, PluginSlotError, check_slot
from rae.run_dir import RunFolder, RunFolderError, check_location, choose_run_folder, start_run_folder
from rae.run_file import RunFile, set_run_root
from rae.run_params import config_tags, run_params, tracker_run_name
from rae.tracking.aim_tracker import AimTracker, TrackerUnavailable, open_repo
from rae.tracking.tracker import Tracker
from rae.train.options import OptimOptions
from rae.train.rng import seed_rngs
from rae.weights import WeightsNotFound

REPO_ROOT = Path(__file__).resolve().parent.parent
_REQUIRED = re.compile(r"^(\S+) set to `%gin.REQUIRED` but not subsequently overridden")
log = logging.getLogger("rae")
# Errors that stop a run before or while it starts, for a reason its config or its input files must fix:
# printed as one paragraph (exit 2), never with a traceback.
REFUSALS = (ConfigError, WeightsNotFound, TrackerUnavailable, UnreadableFile, RunFolderError)
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (what torchrun sends surviving ranks, and schedulers before a kill): the run
    stops where it is, its tracker run is marked interrupted, and rerunning the command resumes it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class RunSpec:
    """What the root gin configurable `run` binds: the experiment and how to run it."""

    experiment: Experiment
    name: str | None
    seed: int
    precision: str
    device: str | None
    tracker: Callable[..., Tracker] | None
    run_root: str
    allow_random_weights: bool


@gin.configurable("run")
def run_spec(
    experiment: Experiment = gin.REQUIRED,
    name: str | None = None,
    seed: int = 0,
    precision: str = "fp32",
    device: str | None = None,
    tracker: Callable[..., Tracker] | None = None,
    run_root: str = "runs",
    allow_random_weights: bool = False,
) -> RunSpec:
    """The root of every config: ``run.experiment = @experiment.latent_stats()`` and friends.

    ``tracker`` is a factory (``@tracker.aim``, no call); by default an Aim repo in ``run_root``.
    """
    try:
        check_slot("run.experiment", experiment, Experiment)
    except PluginSlotError as exc:
        raise ConfigError(f"{exc}; e.g. run.experiment = @experiment.latent_stats()") from exc
    if not 0 <= seed < 2**31:
        raise ConfigError(f"run.seed = {seed!r}: expected an integer in 0 .. 2**31 - 1")
    return RunSpec(experiment, name, seed, precision, device, tracker, run_root, allow_random_weights)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tools/run.py",
        description="Run an rae experiment described by gin files.",
    )
    p.add_argument("--gin", action="append", default=[], metavar="FILE",
                   help="gin file (repeatable); includes also search the repo's gin/ folder")
    p.add_argument("--gin_param", action="append", default=[], metavar="BINDING",
                   help="extra binding, e.g. 'run.seed = 1' (repeatable)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="module (my_plugins) or file (./my_plugins.py) that registers third-party plugins "
                        "(repeatable)")
    p.add_argument("--list", nargs="?", const="all", default=None, metavar="KIND",
                   help="list registered plugins (of one kind) with their parameters, then exit")
    p.add_argument("--dry_run", action="store_true",
                   help="build everything, print the config, parameter counts and latent shape; run nothing")
    p.add_argument("--new_run", action="store_true",
                   help="start a new run folder even if an unfinished one with this config exists")
    return p.parse_args(argv)


def import_plugins(modules: Sequence[str]) -> None:
    """Built-in plugins first, then the user's modules or ``.py`` files (which register themselves on import)."""
    plugins.import_builtin()
    if modules and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # a user's module next to where they run the runner
    for name in modules:
        origin = _plugin_file(name) if _is_file_path(name) else _module_origin(name)
        try:
            if _is_file_path(name):
                _import_file(name, origin)
            else:
                importlib.import_module(name)
        except (Exception, SystemExit) as exc:  # the module's own code raised, or it does not parse
            raise ConfigError(f"--import {name}: importing the module failed{_where(exc, origin)}: "
                              f"{type(exc).__name__}: {exc}") from exc


def _is_file_path(name: str) -> bool:
    """``--import ./my_plugins.py`` (a file) rather than ``--import my_plugins`` (a module name)."""
    return name.endswith(".py") or "/" in name or os.sep in name


def _module_origin(name: str) -> str | None:
    """The file of an importable module; a module that is nowhere to be found is refused, naming where
    it was looked for."""
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # its parent package is missing, or the name is malformed
        found = None
    if found is None:
        raise ConfigError(f"--import {name}: no module {name!r} in the working folder {Path.cwd()} or on the "
                          f"Python path ({', '.join(p or '.' for p in sys.path[:4])}, ...); a file path works "
                          f"too: --import ./{name.replace('.', '/')}.py")
    return found.origin


def _plugin_file(name: str) -> str:
    """The absolute path of ``--import path/to/file.py``, refused naming where it was looked for."""
    path = Path(name).expanduser()
    resolved = path if path.is_absolute() else Path.cwd() / path
    if not resolved.is_file() or resolved.suffix != ".py":
        raise ConfigError(f"--import {name}: no Python file {resolved} (a relative path is looked up in the "
                          f"working folder {Path.cwd()}); expected a .py file that registers plugins")
    return str(resolved)


def _import_file(name: str, path: str) -> None:
    """Import a ``.py`` file as the module named by its stem (so ``import my_plugins`` finds it afterwards)."""
    module = Path(path).stem
    loaded = sys.modules.get(module)
    if loaded is not None:
        if os.path.realpath(getattr(loaded, "__file__", "") or "") == os.path.realpath(path):
            return  # imported before in this process (an embedding program, tests)
        raise ConfigError(f"--import {name}: a module named {module!r} is already imported (from "
                          f"{getattr(loaded, '__file__', None) or 'built in'}); rename {path}")
    spec = importlib.util.spec_from_file_location(module, path)
    code = importlib.util.module_from_spec(spec)
    sys.modules[module] = code
    try:
        spec.loader.exec_module(code)
    except BaseException:
        del sys.modules[module]
        raise


def _where(exc: BaseException, origin: str | None) -> str:
    """`` at FILE, line N``: the syntax error's place, or the deepest frame of the module's own file."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}, line {exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if origin and f.filename == origin]
    return f" at {frames[-1].filename}, line {frames[-1].lineno}" if frames else ""


def _package_file_exists(config_path: str) -> bool:
    """gin's check for ``pkg/file.gin`` inside a Python package, minus its crash on namespace
    packages: with the working folder on ``sys.path`` (``--import``), ``experiments/`` is one,
    has no ``__init__`` origin, and gin's own check raises a TypeError instead of "not found"."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)  # gin logs every miss of its package search as an ERROR
    try:
        return gin.resource_reader.system_path_file_exists(config_path)
    except TypeError:
        return False
    finally:
        root.setLevel(level)


def _use_safe_package_reader() -> None:
    readers = gin.config._FILE_READERS  # gin offers registration but no replacement of a reader
    for i, (reader, exists) in enumerate(readers):
        if exists is gin.resource_reader.system_path_file_exists:
            readers[i] = (reader, _package_file_exists)


def parse_gin(files: Sequence[str], bindings: Sequence[str], fill_required: bool = False) -> list[str]:
    """Parse files one by one (so every error names its file), then the bindings; finalize.

    Returns the required keys left unset, which only a dry run (``fill_required``) tolerates.
    """
    gin.clear_config(clear_constants=True)
    _use_safe_package_reader()
    for folder in (REPO_ROOT / "gin", REPO_ROOT, Path.cwd()):
        gin.add_config_file_search_path(str(folder))
    for path in files:
        if not Path(path).is_file():
            raise ConfigError(f"--gin {path}: no such file")
        try:
            gin.parse_config_file(path)
        except Exception as exc:
            raise_as_config_error(exc, source=path)
    for binding in bindings:
        try:
            gin.parse_config(binding)
        except Exception as exc:
            raise_as_config_error(exc, source=f"--gin_param {binding!r}")
    check_bound_types(list(files), list(bindings))
    return _finalize(source=", ".join(files), fill_required=fill_required)


def _finalize(source: str, fill_required: bool) -> list[str]:
    """Lock the config; a dry run fills ``%gin.REQUIRED`` values with placeholders and lists them."""
    unset: list[str] = []
    while True:
        try:
            gin.finalize()
            return unset
        except ValueError as exc:
            missing = _REQUIRED.search(str(exc))
            if not missing:
                raise_as_config_error(exc, source=source)
            key = missing.group(1)
            if not fill_required:
                raise ConfigError(
                    f"in {source}: `{key}` is required (bound to %gin.REQUIRED); "
                    f"set it, e.g. --gin_param '{key} = ...'"
                ) from exc
            gin.bind_parameter(key, f"<required: {key}>")
            unset.append(key)


gin.register("run_file")(RunFile)
gin.register("optim")(OptimOptions)  # the trainers' optimiser options: stage2.optim = @optim()


def _bound(key: str, default: Any) -> Any:
    """A value bound in the parsed config, or the configurable's default."""
    try:
        return gin.query_parameter(key)
    except ValueError:
        return default


def build_spec(source: str) -> RunSpec:
    """Call the root configurable; gin errors during construction become config errors.

    The global RNG is seeded with ``run.seed`` first, so freshly initialised weights are the
    same on every rank and in every rerun of the config.
    """
    seed_rngs(_bound("run.seed", 0))
    try:
        return run_spec()
    except Exception as exc:
        raise_as_config_error(exc, source=source)
        raise


def list_plugins(kind: str) -> str:
    kinds = list(REGISTRIES) if kind == "all" else [kind]
    lines = []
    for k in kinds:
        if k not in REGISTRIES:
            raise ConfigError(f"--list {kind}: no such kind (kinds: {', '.join(REGISTRIES)})")
        lines.append(f"[{k}]")
        for name, _ in REGISTRIES[k]:
            params = ", ".join(f"{p}={d}" for p, d in REGISTRIES[k].describe(name))
            lines.append(f"  @{k}.{name}({params})")
    return "\n".join(lines)


def format_count(count: int) -> str:
    """``12``, ``12.3K``, ``415.1M``, ``1.2B``: a parameter count readable at every size."""
    for scale, suffix in ((1e9, "B"), (1e6, "M")):
        if round(count / scale, 1) >= 1:  # 999,960 reads 1.0M, not 1000.0K
            return f"{count / scale:.1f}{suffix}"
    return f"{count / 1e3:.1f}K" if count >= 1000 else str(count)


def describe(spec: RunSpec) -> str:
    """The dry-run report: operative config, every model's parameter count, the latent shape."""
    lines = ["# operative config", gin.operative_config_str(), "# models"]
    for name, model in spec.experiment.models().items():
        count = count_parameters(model)
        lines.append(f"{name}: {type(model).__name__}, {format_count(count)} parameters ({count:,})")
    shape = spec.experiment.latent_shape()
    lines.append(f"latent shape: {tuple(shape) if shape else 'none'}")
    return "\n".join(lines)


def canonical_tags(tags: Sequence[str]) -> list[str]:
    """One spelling per tag: a plugin's class name becomes its registered name (``DiTDH`` -> ``ditdh``,
    ``EulerSampler`` -> ``euler``), anything else is lower-cased; duplicates go, the order stays."""
    registered = {obj.__name__: name for registry in REGISTRIES.values() for name, obj in registry
                  if isinstance(obj, type)}
    spelled = [registered.get(tag, tag.lower()) for tag in tags]
    return list(dict.fromkeys(spelled))


def execute(spec: RunSpec, folder: RunFolder, accelerator: Accelerator, experiment_name: str) -> dict[str, Any]:
    """Run an experiment in its folder under a tracker; the tracker is closed as failed on error.

    Only the main rank opens a tracker and writes the folder's files; every rank runs.
    """
    tracker: Tracker = Tracker()
    if accelerator.is_main:
        make_tracker = spec.tracker or partial(AimTracker, repo=spec.run_root)
        tracker = make_tracker(name=tracker_run_name(spec.experiment.kind, folder.run_name),
                               experiment=experiment_name, run_hash=folder.tracker_hash())
        folder.remember_tracker(tracker)
    error: BaseException | None = None
    try:
        tracker.add_tags(canonical_tags([*spec.experiment.tags(), *config_tags()]))
        tracker.log_params(run_params(accelerator))
        tracker.log_text("config", gin.config_str())
        seed_everything(spec.seed, accelerator.rank)
        ctx = RunContext(accelerator, tracker, folder.path, spec.seed, spec.allow_random_weights, log)
        spec.experiment.load_weights(spec.allow_random_weights, log)
        summary = spec.experiment.run(ctx)
        tracker.log_text("operative_config", gin.operative_config_str())
        if accelerator.is_main:
            folder.write_text("operative_config.gin", gin.operative_config_str())
            folder.mark_done()
        return summary
    except BaseException as exc:
        error = exc
        raise
    finally:
        tracker.close(error)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit code is 0 done, 2 configuration error, 1 failure while running,
    130 / 143 interrupted by SIGINT / SIGTERM (rerunning the command resumes)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    accelerators: list[Accelerator] = []
    previous = _interrupt_on_signals()
    try:
        return _run_command(parse_args(argv), accelerators)
    except KeyboardInterrupt as exc:  # before the run started: nothing to resume yet
        print(f"interrupted ({_signal_name(exc)}) before the run started", file=sys.stderr)
        return EXIT_INTERRUPTED[getattr(exc, "signum", signal.SIGINT)]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        set_run_root(None)
        for accelerator in accelerators:
            release(accelerator)


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def _interrupt_on_signals() -> dict[int, Any]:
    """SIGTERM stops the run as Ctrl-C does (instead of killing it on the spot), and Ctrl-C does so whatever
    handler the embedding program (or a library it loaded) left for SIGINT; returns the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers (an embedding program's worker thread)
    previous = {signum: signal.getsignal(signum) for signum in EXIT_INTERRUPTED}
    for signum in EXIT_INTERRUPTED:
        signal.signal(signum, _raise_interrupted)
    return previous


def _signal_name(exc: BaseException) -> str:
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def _refusal(exc: BaseException) -> int:
    """Print a refusal as one paragraph; exit code 2."""
    prefix = "cannot run" if isinstance(exc, UnreadableFile) else "configuration error"
    print(f"{prefix}: {exc}", file=sys.stderr)
    return 2


def check_experiment(spec: RunSpec, world_size: int, source: str) -> None:
    """The experiment's checks of its config against the world size, before any folder is made."""
    try:
        spec.experiment.check(world_size)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"in {source}: {exc}") from exc


def _accelerator() -> Accelerator:
    """The run's accelerator (under torchrun this joins the process group)."""
    try:
        return make_accelerator(_bound("run.device", None), _bound("run.precision", "fp32"))
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"run.device / run.precision: {exc}") from exc


def _agree_on_folder(accelerator: Accelerator | None, choose: Callable[[], RunFolder]) -> RunFolder:
    """Rank 0 chooses the run folder and tells the others, so all ranks run in one folder."""
    if accelerator is None or not accelerator.distributed:
        return choose()
    box = [choose() if accelerator.is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _already_finished(folder: RunFolder, accelerator: Accelerator) -> int:
    """Say that this exact config already ran to the end, where, and how to run it again; exit code 0."""
    if accelerator.is_main:
        print(f"nothing to do: a run with this exact config finished on {folder.finished}; its outputs are in "
              f"{folder.path}\nto run it again in a new folder, add --new_run")
    return 0


def _run_command(args: argparse.Namespace, accelerators: list[Accelerator]) -> int:
    try:
        import_plugins(args.imports)
        if args.list:
            print(list_plugins(args.list))
            return 0
        if not args.gin:
            raise ConfigError("no experiment given: pass --gin experiments/<name>.gin")
        unset = parse_gin(args.gin, args.gin_param, fill_required=args.dry_run)
        source = ", ".join(args.gin)
        accelerator = None if args.dry_run else _accelerator()
        if accelerator is not None:
            accelerators.append(accelerator)
            # under torchrun every rank would log the same (rank-averaged) lines: rank 0 speaks for all
            log.setLevel(logging.NOTSET if accelerator.is_main else logging.WARNING)
        # The folder is chosen (not made) before building, so `@run_file()` paths resolve in it.
        stem = Path(args.gin[-1]).stem
        root, name = _bound("run.run_root", "runs"), _bound("run.name", None) or stem
        if accelerator is not None:
            check_location(root, name)
        folder = _agree_on_folder(accelerator, lambda: choose_run_folder(root, name, gin.config_str(),
                                                                          new=args.new_run))
        if folder.finished is not None and not args.dry_run:
            return _already_finished(folder, accelerator)
        set_run_root(folder.path)
        with torch.device("meta") if args.dry_run else contextlib.nullcontext():
            spec = build_spec(source)
        world_size = accelerator.world_size if accelerator is not None else int(os.environ.get("WORLD_SIZE", 1))
        check_experiment(spec, world_size, source)
        if args.dry_run:
            print(describe(spec))
            if unset:
                print("required values not set (a real run needs them): " + ", ".join(unset))
            return 0
        if accelerator.is_main:
            make_repo = partial(open_repo, spec.run_root) if spec.tracker is None else None
            folder = start_run_folder(folder, root, name, gin.config_str(), new=args.new_run, under_lock=make_repo)
        folder = _agree_on_folder(accelerator, lambda: folder)  # rank 0 may have had to choose again
        if folder.finished is not None:
            return _already_finished(folder, accelerator)
        set_run_root(folder.path)
    except REFUSALS as exc:
        return _refusal(exc)
    return _execute_and_report(spec, folder, accelerator, stem)


def _execute_and_report(spec: RunSpec, folder: RunFolder, accelerator: Accelerator, stem: str) -> int:
    """Run the experiment in its started folder; print where its outputs are and its summary (main rank).
    The exit code is 0 done, 2 refused, 1 failed, 130 / 143 interrupted (the folder is unlocked in every case)."""
    accelerator.barrier()
    start = time.time()
    try:
        summary = execute(spec, folder, accelerator, experiment_name=stem)
    except REFUSALS as exc:
        return _refusal(exc)
    except KeyboardInterrupt as exc:
        print(f"interrupted ({_signal_name(exc)}) after {time.time() - start:.0f}s; rerun the same command to "
              f"resume from the last checkpoint in {folder.path}", file=sys.stderr)
        return EXIT_INTERRUPTED[getattr(exc, "signum", signal.SIGINT)]
    except Exception:
        traceback.print_exc()
        print(f"run failed after {time.time() - start:.0f}s; run folder: {folder.path}", file=sys.stderr)
        return 1
    finally:
        folder.unlock()
    if not accelerator.is_main:
        return 0
    print(f"done in {time.time() - start:.0f}s; run folder: {folder.path}")
    for key, value in (summary or {}).items():
        print(f"  {key}: {value}")
    if spec.tracker is None:
        print(f"compare runs in the Aim UI: python tools/aim_view.py --repo {spec.run_root} "
              f"(aim up --repo {spec.run_root} with a saved view of the columns that compare them)")
    return 0
