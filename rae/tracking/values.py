"""Values a tracker can store: plain data, and dotted keys nested the way Aim queries them."""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

HPARAMS = "hparams"  # the run param holding the flat config, e.g. ``run.hparams.backbone.name`` in Aim QL
log = logging.getLogger(__name__)


def plain(value: Any) -> Any:
    """``value`` as bool/int/float/str/None, lists and string-keyed dicts; anything else as text.

    Tensors and numpy values become numbers or lists (through their ``tolist``); non-finite
    floats become text, since a tracker's param store (Aim's included) cannot compare them.
    """
    if callable(getattr(value, "tolist", None)):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"backbone.hidden_size": 768}`` -> ``{"backbone": {"hidden_size": 768}}``.

    Aim addresses params by attribute path (``run.hparams.backbone.hidden_size``), so
    dotted keys are stored nested. A key that would overwrite another's subtree (or
    sit inside another's value) is skipped with a warning, never silently merged.
    """
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        if not isinstance(node, dict) or leaf in node:
            log.warning("tracker param '%s' clashes with another key of the same path; skipped", key)
            continue
        node[leaf] = value
    return nested


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The inverse of `nest`: dotted keys for every leaf, e.g. for a table column."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{path}."))
        else:
            flat[path] = value
    return flat
