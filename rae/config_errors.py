"""Turn gin's and the registries' errors into one paragraph naming the file, line and binding."""
from __future__ import annotations

import collections.abc
import inspect
import re
import tokenize
import types
import typing
from typing import Any

import gin

from rae.registry import REGISTRIES, RegistryError, close_matches

_UNKNOWN_REFERENCE = re.compile(r"No configurable matching (?:reference )?'@?([\w.]+?)(?:\(\))?'")
_GIN_CALL_NOTE = re.compile(r"\s*In call to configurable '[^']*' \([^)]*\)")  # gin's note on errors in calls
_LOCATION = re.compile(r'In file "([^"]+)", line (\d+)')
# Errors gin raises for bad config text or values; anything else is a bug, not a config error.
CONFIG_EXCEPTIONS = (ValueError, TypeError, KeyError, OSError, SyntaxError, AttributeError, tokenize.TokenError)


class ConfigError(Exception):
    """A configuration mistake; the runner prints it without a traceback and exits 2."""


def _did_you_mean(selector: str) -> str:
    """For an unknown ``kind.name``, the closest names registered under that kind (or anywhere)."""
    kind, _, name = selector.rpartition(".")
    if kind in REGISTRIES:
        registry = REGISTRIES[kind]
        hints = close_matches(name, registry.names())
        known = ", ".join(registry.names()) or "none"
        hint = f" Did you mean {', '.join('@' + kind + '.' + h for h in hints)}?" if hints else ""
        return f" No {kind} named '{name}' is registered.{hint} Registered {kind}s: {known}."
    everything = [f"{k}.{n}" for k, r in REGISTRIES.items() for n in r.names()]
    hints = close_matches(selector, everything)
    if hints:
        return f" Did you mean {', '.join(hints)}?"
    return " (A plugin from your own module needs --import MODULE.)"


def raise_as_config_error(exc: BaseException, source: str) -> None:
    """Raise a `ConfigError` for a configuration mistake; re-raise anything else unchanged."""
    if not isinstance(exc, CONFIG_EXCEPTIONS + (RegistryError, ConfigError)):
        raise exc
    text = _GIN_CALL_NOTE.sub("", str(exc)).strip()
    if isinstance(exc, ConfigError):
        raise exc if text == str(exc) else ConfigError(text).with_traceback(exc.__traceback__)
    if isinstance(exc, tokenize.TokenError):
        text = f"unbalanced brackets or an unterminated string ({exc.args[0]}) in {source}"
    elif isinstance(exc, AttributeError) and "importlib" in text:
        text = f"a file included from {source} was not found"
    location = _LOCATION.search(text)
    where = f"{location.group(1)}, line {location.group(2)}" if location else source
    unknown = _UNKNOWN_REFERENCE.search(text)
    hint = _did_you_mean(unknown.group(1)) if unknown else ""
    paragraph = " ".join(line.strip() for line in text.splitlines() if line.strip() and line.strip() != "^")
    raise ConfigError(f"in {where}: {paragraph}{hint}") from exc


def check_bound_types(files: list[str], bindings: list[str]) -> None:
    """Every plain value (number, string, list, ...) bound in the parsed config has the type its
    parameter is annotated with, so ``stage2.total_steps = 'ten'`` is refused where it is bound,
    naming the binding, instead of failing at run time. References and macros are not checked."""
    for (scope, selector), values in gin.config._CONFIG.items():  # gin offers no public walk of bindings
        configurable = gin.config._REGISTRY.get_match(selector)
        if configurable is None:
            continue
        hints = _type_hints(configurable.wrapped)
        for param, value in values.items():
            if param not in hints or not _is_plain(value) or _accepts(value, hints[param]) is not False:
                continue
            key = f"{scope + '/' if scope else ''}{configurable.name}.{param}"
            given = [b for b in bindings if b.partition("=")[0].strip().endswith(f"{configurable.name}.{param}")]
            source = f"--gin_param {given[-1]!r}" if given else ", ".join(files)
            raise ConfigError(f"in {source}: `{key} = {value!r}`: expected {_describe(hints[param])}, "
                              f"got {type(value).__name__} {value!r}")


def _type_hints(obj: Any) -> dict[str, Any]:
    """Parameter annotations of a function or a class's constructor; none when they cannot be resolved."""
    try:
        return typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # a forward reference that does not resolve: the parameter goes unchecked
        return {}


def _is_plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(v) for v in value.values())
    return value is None or isinstance(value, (bool, int, float, str))


_SCALARS = {bool: (bool,), int: (int,), float: (int, float), str: (str,), type(None): (type(None),)}


def _accepts(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits ``hint``: True, False, or None when the hint is beyond this check."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SCALARS:
        kinds = _SCALARS[hint]
        return isinstance(value, kinds) and (hint is bool or not isinstance(value, bool))
    if origin in (typing.Union, types.UnionType):
        verdicts = [_accepts(value, a) for a in args]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is typing.Literal:
        return value in args
    if origin in (list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        return _all(value, [args[0]] * len(value) if args else [])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return _all(value, [args[0]] * len(value))
        return len(value) == len(args) and _all(value, list(args)) if args else True
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return False  # a plain value is never callable: a reference such as @kind.name was meant
    if inspect.isclass(hint) and hint.__module__ != "builtins" and not isinstance(value, (str, type(None))):
        return isinstance(value, hint)  # e.g. a number where a model or a dataset is expected
    return None


def _all(values: Any, hints: list[Any]) -> bool | None:
    verdicts = [_accepts(v, h) for v, h in zip(values, hints)]
    return False if False in verdicts else (None if None in verdicts else True)


def _describe(hint: Any) -> str:
    """A type hint in words: ``int``, ``float | None``, ``tuple[float, float]``."""
    if inspect.isclass(hint) and not typing.get_args(hint):
        return "None" if hint is type(None) else hint.__name__
    return str(hint).replace("typing.", "")
