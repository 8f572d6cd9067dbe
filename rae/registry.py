"""Plugin registries: one generic `Registry`, one instance per kind of plugin.

Registering an entry also registers it with gin under the kind as gin module, so a
gin file reads ``autoencoder.encoder = @encoder.dinov2()``. Library code never sees
gin: it is used here, in the registration layer, and at the runner.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterator, TypeVar

import gin

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate plugin name; the message says which and what exists."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def close_matches(name: str, candidates: list[str]) -> list[str]:
    """The registered names closest to a misspelt one, best first."""
    return difflib.get_close_matches(name, candidates, n=3, cutoff=0.4)


class Registry:
    """Name -> plugin (class or factory function) for one kind, e.g. ``encoder``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` here and as gin ``@kind.name``."""

        def decorate(obj: T) -> T:
            taken = self._entries.get(name)
            if taken is not None and taken is not obj:
                raise RegistryError(
                    f"{self.kind} '{name}' is already registered to "
                    f"{_qualname(taken)}; cannot register {_qualname(obj)} under the same name"
                )
            if taken is None:
                self._entries[name] = obj
                gin.register(name, module=self.kind)(obj)
            return obj

        return decorate

    def get(self, name: str) -> Any:
        """The plugin registered as ``name``; unknown names fail with the closest ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        hints = close_matches(name, self.names())
        hint = f"; did you mean {', '.join(repr(h) for h in hints)}?" if hints else ""
        return (
            f"unknown {self.kind} '{name}'{hint} "
            f"(registered {self.kind}s: {', '.join(self.names()) or 'none'})"
        )

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(sorted(self._entries.items()))

    def describe(self, name: str) -> list[tuple[str, str]]:
        """(parameter, default) pairs of a plugin's constructor, for ``--list``."""
        params = inspect.signature(self.get(name)).parameters.values()
        return [
            (p.name, "REQUIRED" if p.default is inspect.Parameter.empty else repr(p.default))
            for p in params
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


ENCODERS = Registry("encoder")
TEXT_ENCODERS = Registry("text_encoder")
DECODERS = Registry("decoder")
AUTOENCODERS = Registry("autoencoder")
BACKBONES = Registry("backbone")
PATHS = Registry("path")
TIME_SCHEDULES = Registry("time_schedule")
SAMPLERS = Registry("sampler")
GUIDANCE = Registry("guidance")
LOSSES = Registry("loss")
DATASETS = Registry("dataset")
EXPERIMENTS = Registry("experiment")
TRACKERS = Registry("tracker")
EVALUATIONS = Registry("evaluation")

REGISTRIES: dict[str, Registry] = {
    r.kind: r
    for r in (
        ENCODERS, TEXT_ENCODERS, DECODERS, AUTOENCODERS, BACKBONES, PATHS, TIME_SCHEDULES,
        SAMPLERS, GUIDANCE, LOSSES, DATASETS, EXPERIMENTS, TRACKERS, EVALUATIONS,
    )
}
