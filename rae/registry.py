"""Plugin registries: one generic `Registry`, one instance per kind of plugin.

Registering an entry also registers it with gin under the kind as gin module, so a
gin file reads ``autoencoder.encoder = @encoder.dinov2()``. Library code never sees
gin: it is used here, in the registration layer, and at the runner.

A registered class's constructor also checks its plugin slots (`SLOTS`): a parameter annotated
``Backbone`` (or ``Sampler``, ``LabelledImages``, ...) refuses a value of another kind, naming the
base class to subclass, before the constructor runs.
"""
from __future__ import annotations

import collections.abc
import difflib
import functools
import importlib
import inspect
import types
import typing
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
                if inspect.isclass(obj):
                    check_slots_on_init(obj, name)
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


# ---------------------------------------------------------------- plugin slots
# A constructor parameter annotated with one of these types is a slot: the value it receives is
# checked before the constructor runs, so a plain nn.Module given as a backbone is refused where the
# experiment receives it, naming the class to subclass, instead of failing later at the first
# attribute it lacks. (module, type, kind); imported on first use: those modules import this one.
SLOTS = (
    ("rae.backbones.base", "Backbone", "backbone"),
    ("rae.sampling.base", "Sampler", "sampler"),
    ("rae.sampling.guidance", "Guidance", "guidance"),
    ("rae.data.base", "LabelledImages", "dataset"),
    ("rae.decoders.base", "Decoder", "decoder"),
    ("rae.encoders.base", "Encoder", "encoder"),
    ("rae.experiments.base", "Experiment", "experiment"),
)
_PROTOCOL_DEFAULTS = {"__init__", "__subclasshook__"}  # functions typing.Protocol adds to every protocol
_GIN_NAMES: dict[type, str] = {}  # registered class -> its name in gin, for the messages of its checks


class PluginSlotError(TypeError):
    """A plugin parameter received something that is not of its slot's base class (or protocol)."""


@functools.cache
def slot_types() -> dict[type, str]:
    """Slot base class (or protocol) -> plugin kind."""
    return {getattr(importlib.import_module(module), name): kind for module, name, kind in SLOTS}


def protocol_members(protocol: type) -> list[str]:
    """The attributes and methods a protocol (e.g. `LabelledImages`) declares."""
    body = vars(protocol)
    methods = [n for n, v in body.items() if inspect.isfunction(v) and n not in _PROTOCOL_DEFAULTS]
    return [*body.get("__annotations__", {}), *methods]


def is_slot_value(value: Any, slot: type) -> bool:
    """Whether ``value`` is an instance of ``slot``; for a protocol, whether it has its members
    (looked up statically: a dataset's properties may read files, which a dry run does not have)."""
    if not getattr(slot, "_is_protocol", False):
        return isinstance(value, slot)
    missing = object()
    return all(inspect.getattr_static(value, member, missing) is not missing for member in protocol_members(slot))


def slot_verdict(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits the slots named in ``hint``: True, False, or None when the hint names no
    slot or this check cannot tell (a factory function where ``Callable[..., Decoder]`` is expected)."""
    slots = slot_types()
    if isinstance(hint, type) and hint in slots:
        return is_slot_value(value, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        verdicts = [(value is None) if arm is type(None) else slot_verdict(value, arm) for arm in args]
        if True in verdicts:
            return True
        return None if None in verdicts or not any(slot_names(arm) for arm in args) else False
    if origin in (list, tuple, collections.abc.Sequence) and args:
        if not isinstance(value, (list, tuple)):
            return False
        each = args if origin is tuple and args[-1] is not Ellipsis else (args[0],) * len(value)
        return _all_fit([slot_verdict(v, arm) for v, arm in zip(value, each)])
    if origin in (dict, collections.abc.Mapping) and len(args) == 2:
        return _all_fit([slot_verdict(v, args[1]) for v in value.values()]) if isinstance(value, dict) else False
    if origin is collections.abc.Callable and args and isinstance(args[-1], type) and args[-1] in slots:
        if inspect.isclass(value):
            return issubclass(value, args[-1]) if not getattr(args[-1], "_is_protocol", False) else None
        return None  # a factory function: what it returns is known only when it is called
    return None


def _all_fit(verdicts: list[bool | None]) -> bool | None:
    return False if False in verdicts else (None if None in verdicts else True)


def slot_names(hint: Any) -> list[tuple[str, type]]:
    """(kind, base) of every slot a hint names, e.g. ``Decoder | Callable[..., Decoder]`` -> decoder."""
    slots = slot_types()
    if isinstance(hint, type) and hint in slots:
        return [(slots[hint], hint)]
    args = [a for arg in typing.get_args(hint) for a in (arg if isinstance(arg, list) else [arg])]
    found = [pair for arg in args if arg is not Ellipsis for pair in slot_names(arg)]
    return list(dict.fromkeys(found))


def slot_contract(base: type) -> str:
    """What a plugin of a slot must be, in words: the class to subclass, or the protocol's members."""
    path = f"{base.__module__}.{base.__qualname__}"
    if getattr(base, "_is_protocol", False):
        return f"it needs {', '.join(protocol_members(base))} (the protocol {path})"
    return f"subclass {path}"


def check_slot(field: str, value: Any, hint: Any) -> None:
    """Refuse ``value`` for the parameter ``field`` (e.g. ``stage2.backbone``) annotated ``hint`` when it
    is not of the slot's kind, naming the base class to subclass (`PluginSlotError`)."""
    if slot_verdict(value, hint) is not False:
        return
    slots = slot_names(hint)
    if value is None:
        given = "None"
    elif inspect.isclass(value):
        given = f"the class {_qualname(value)}"
    else:
        given = f"a {_qualname(type(value))}"
    kinds = " or ".join(f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}" for kind, _ in slots)
    raise PluginSlotError(f"{field} is {given}, not {kinds}: {'; or '.join(slot_contract(base) for _, base in slots)} "
                          "(README.md, 'Register your own plugin')")


def check_slot_arguments(owner: str, init: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
    """`check_slot` for every slot parameter of a constructor call, named ``owner.param``."""
    hints = _slot_hints(init)
    if not hints:
        return
    try:
        bound = inspect.signature(init).bind(*args, **kwargs)
    except TypeError:
        return  # the constructor reports its own argument errors
    for param, value in bound.arguments.items():
        if param in hints:
            check_slot(f"{owner}.{param}", value, hints[param])


@functools.cache
def _slot_hints(init: Callable[..., Any]) -> dict[str, Any]:
    """The constructor parameters annotated with a slot type (alone, optional, in a union or a container)."""
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # an annotation that does not resolve: its parameters go unchecked
        return {}
    return {param: hint for param, hint in hints.items() if param != "return" and slot_names(hint)}


def check_slots_on_init(cls: type, name: str) -> None:
    """Make ``cls``'s constructor check its slot arguments first (`check_slot_arguments`), naming
    them ``name.param`` as gin binds them (a registered subclass that inherits it, by its own name)."""
    _GIN_NAMES[cls] = name
    init = cls.__init__
    if getattr(init, "checks_slots", False):
        return  # inherited from a registered base class, which already checks

    @functools.wraps(init)
    def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        owner = next(_GIN_NAMES[c] for c in type(self).__mro__ if c in _GIN_NAMES)
        check_slot_arguments(owner, init, (self, *args), kwargs)
        init(self, *args, **kwargs)

    checked_init.checks_slots = True  # type: ignore[attr-defined]
    # gin reads parameters and defaults with getfullargspec, which ignores __wrapped__ but not __signature__
    checked_init.__signature__ = inspect.signature(init)  # type: ignore[attr-defined]
    cls.__init__ = checked_init  # type: ignore[misc]


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
