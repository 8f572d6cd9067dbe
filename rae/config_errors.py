"""Turn gin's and the registries' errors into one paragraph naming the file, line and binding."""
from __future__ import annotations

import re
import tokenize

from rae.registry import REGISTRIES, RegistryError, close_matches

_UNKNOWN_REFERENCE = re.compile(r"No configurable matching (?:reference )?'@?([\w.]+?)(?:\(\))?'")
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
    if isinstance(exc, ConfigError) or not isinstance(exc, CONFIG_EXCEPTIONS + (RegistryError,)):
        raise exc
    text = str(exc).strip()
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
