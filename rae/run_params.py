"""The params a tracker run carries: the config (flat and nested), commit, versions, device.

The flat keys (``hparams``) stay the same whichever plugin a run picks, so runs line up
as columns in `aim up` and `tools/compare.py`: ``stage2.backbone = @backbone.ditdh()``
with ``ditdh.hidden_size = 768`` gives ``backbone.name = "ditdh"`` and
``backbone.hidden_size = 768``; a run on LightningDiT fills the same two columns.
"""
from __future__ import annotations

import logging
import platform
import subprocess
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import gin
from gin.config import ConfigurableReference

from rae.accelerator import Accelerator
from rae.registry import REGISTRIES
from rae.tracking.values import HPARAMS, nest, plain

PACKAGES = ("torch", "torchvision", "timm", "transformers", "gin-config", "torchdiffeq", "lpips", "aim")
MACROS = ("gin.macro", "gin.constant")
TAG_KINDS = ("encoder", "backbone")  # kinds whose chosen plugin names become run tags

Key = tuple[str, str]  # how gin keys a configurable's bindings: (scope, complete selector)
log = logging.getLogger(__name__)


def run_params(accelerator: Accelerator) -> dict[str, Any]:
    """Everything `Tracker.log_params` gets at the start of a run (gin parsed, experiment built)."""
    bound = bindings()
    return {
        HPARAMS: nest(flat_config(bound)),
        "config": config_dict(bound),
        "git_commit": git_commit(),
        "versions": versions(),
        "accelerator": accelerator.describe(),
    }


def tracker_run_name(kind: str, folder_name: str) -> str:
    """``<experiment kind>/<config name>/<run folder>``, e.g. ``stage2/ditdh_xl/20250101-120000``.

    Readable in the runs table, and its tail is the run folder under the run root.
    """
    return f"{kind}/{folder_name}"


def config_tags() -> list[str]:
    """The names of the encoder and backbone a run uses, as tags (``dinov2``, ``ditdh``)."""
    flat = flat_config()
    return [str(flat[f"{kind}.name"]) for kind in TAG_KINDS if f"{kind}.name" in flat]


# ---------------------------------------------------------------- the config as gin holds it
def bindings() -> dict[Key, dict[str, Any]]:
    """Every bound parameter, plus the defaults gin recorded for configurables already called."""
    merged: dict[Key, dict[str, Any]] = {}
    for source in (gin.config._CONFIG, gin.config._OPERATIVE_CONFIG):  # gin exposes no public view
        for key, params in source.items():
            if key[1] not in MACROS:
                merged.setdefault(key, {}).update(params)
    return merged


def config_dict(bound: dict[Key, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The config nested as gin prints it: ``{"scope/configurable": {"param": value}}``.

    Configurables go by their short name (``latent_stats``), by the complete selector only
    where two share a short name.
    """
    bound = bindings() if bound is None else bound
    selectors = {selector for _, selector in bound}
    shorts = Counter(selector.rpartition(".")[2] for selector in selectors)
    nested: dict[str, dict[str, Any]] = {}
    for (scope, selector), params in bound.items():
        short = selector.rpartition(".")[2]
        name = short if shorts[short] == 1 else selector
        nested[f"{scope}/{name}" if scope else name] = {p: _literal(v) for p, v in params.items()}
    return nested


# ---------------------------------------------------------------- flat, stable keys
def flat_config(bound: dict[Key, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``{"backbone.name": "ditdh", "backbone.hidden_size": 768, "run.seed": 0, ...}``.

    A parameter bound to a plugin (``@backbone.ditdh()``) becomes ``<prefix>.name`` and that
    plugin's own parameters sit under the same prefix (see `_prefixes`). Plugins nothing
    refers to are not part of the run and are left out (the nested config keeps them).
    """
    bound = bindings() if bound is None else bound
    prefixes = _prefixes(bound)
    flat: dict[str, Any] = {}
    for key, params in bound.items():
        if key not in prefixes:
            continue
        for param, value in sorted(params.items()):
            value = _resolve(value)
            plugin = _plugin(value.configurable.selector) if isinstance(value, ConfigurableReference) else None
            if plugin and value.config_key in prefixes:
                _put(flat, f"{prefixes[value.config_key]}.name", plugin[1])
            else:
                _put(flat, f"{prefixes[key]}.{param}", _literal(value))
    return dict(sorted(flat.items()))


def _prefixes(bound: dict[Key, dict[str, Any]]) -> dict[Key, str]:
    """The key prefix of every configurable in the run.

    Plain configurables keep their name (``run``). A plugin takes its kind (``backbone``)
    when free, first come the plugins bound to a parameter named after their kind
    (``stage2.backbone``), so an autoguidance guide backbone never takes the main one's
    place; a plugin that finds its kind taken, or that sits inside a list, gets
    ``<kind>.<name>``. A scope leads: ``@guide/backbone.ditdh()`` -> ``guide.backbone``.
    """
    owner: dict[str, Key] = {}
    prefixes: dict[Key, str] = {}

    def claim(key: Key, *candidates: str) -> None:
        for candidate in candidates:
            if key in prefixes:
                return
            if owner.setdefault(candidate, key) == key:
                prefixes[key] = candidate

    for key in bound:
        scope, selector = key
        if _plugin(selector) is None:
            claim(key, _join(scope, selector.rpartition(".")[2]), _join(scope, selector))
    direct, listed = _plugin_references(bound)
    for param, ref, kind in sorted(direct, key=lambda d: d[0] != d[2]):  # `stage2.backbone` before `guide`
        scope, selector = ref.config_key
        claim(ref.config_key, _join(scope, kind), _join(scope, selector))
    for ref in listed:
        claim(ref.config_key, _join(*ref.config_key))
    for key in bound:  # bindings in a scope that a scoped parent enters, e.g. ``eval/sampler.euler``
        scope, selector = key
        if scope and ("", selector) in prefixes:
            claim(key, _join(scope, prefixes[("", selector)]), _join(scope, selector))
    return prefixes


def _plugin_references(
    bound: dict[Key, dict[str, Any]],
) -> tuple[list[tuple[str, ConfigurableReference, str]], list[ConfigurableReference]]:
    """References to plugins: (parameter, reference, kind) of those bound directly, and those inside lists."""
    direct, listed = [], []
    for params in bound.values():
        for param, value in params.items():
            value = _resolve(value)
            if isinstance(value, ConfigurableReference):
                plugin = _plugin(value.configurable.selector)
                if plugin:
                    direct.append((param, value, plugin[0]))
            else:
                listed.extend(ref for ref in _references(value) if _plugin(ref.configurable.selector))
    return direct, listed


def _plugin(selector: str) -> tuple[str, str] | None:
    """(kind, name) when ``selector`` names a registered plugin, e.g. ``backbone.ditdh``."""
    kind, _, name = selector.rpartition(".")
    registry = REGISTRIES.get(kind)
    return (kind, name) if registry is not None and name in registry else None


def _references(value: Any) -> Iterator[ConfigurableReference]:
    """References inside a list, tuple or dict value, at any depth."""
    value = _resolve(value)
    if isinstance(value, ConfigurableReference):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _references(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _references(item)


def _resolve(value: Any) -> Any:
    """A macro (``%NAME``) or constant stands for its value; anything else is itself."""
    while isinstance(value, ConfigurableReference) and value.configurable.selector in MACROS:
        name = "/".join(value.scopes)
        value = gin.query_parameter(f"{name}/gin.macro.value" if value.configurable.selector == "gin.macro" else name)
    return value


def _literal(value: Any) -> Any:
    """A bound value as plain data: macros resolved, references as gin writes them."""
    value = _resolve(value)
    if isinstance(value, (list, tuple)):
        return [_literal(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _literal(v) for k, v in value.items()}
    return plain(value)


def _join(scope: str, name: str) -> str:
    return f"{scope.replace('/', '.')}.{name}" if scope else name


def _put(flat: dict[str, Any], key: str, value: Any) -> None:
    if flat.setdefault(key, value) != value:
        log.warning("tracker param '%s' is bound twice (%r, %r); keeping the first", key, flat[key], value)


# ---------------------------------------------------------------- where the code and tools come from
def git_commit() -> str:
    """The repository's HEAD commit, or "unknown" outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def versions() -> dict[str, str]:
    """Python and the versions of the packages a result depends on."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
