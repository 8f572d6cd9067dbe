"""The RAE release's own code, loaded by path from a checkout the user points to (never vendored).

``load_reference("/path/to/RAE")`` puts ``<checkout>/src`` first on ``sys.path`` (the release's
scripts run from there and import ``stage1``, ``stage2`` and ``utils`` as top-level packages)
and returns the classes and functions the side-by-side benchmark times:

- ``stage2.models.DDT.DiTwDDTHead`` (DiT-DH with ``forward_with_cfg`` / ``forward_with_autoguidance``),
- ``stage2.transport.create_transport`` and ``Sampler`` (training loss and the torchdiffeq ODE sampler),
- ``stage1.decoders.decoder.GeneralDecoder`` (the ViT-MAE decoder),
- ``utils.optim_utils.build_optimizer`` (the release's AdamW, ``fused=True``).
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# (module, attribute) the benchmark needs, each with the release file it lives in.
_NEEDED = (
    ("stage2.models.DDT", "DiTwDDTHead", "src/stage2/models/DDT.py"),
    ("stage2.transport", "create_transport", "src/stage2/transport/__init__.py"),
    ("stage2.transport", "Sampler", "src/stage2/transport/transport.py"),
    ("stage1.decoders.decoder", "GeneralDecoder", "src/stage1/decoders/decoder.py"),
    ("utils.optim_utils", "build_optimizer", "src/utils/optim_utils.py"),
)
_PACKAGES = ("stage1", "stage2", "utils")


class UnusableReference(ValueError):
    """The checkout given as the reference cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Reference:
    """The release's classes and functions, and the checkout they came from."""

    root: Path
    DiTwDDTHead: type
    create_transport: Callable[..., Any]
    Sampler: type
    GeneralDecoder: type
    build_optimizer: Callable[..., Any]


def _check_layout(root: Path) -> None:
    missing = [f for _, _, f in _NEEDED if not (root / f).is_file()]
    if missing:
        raise UnusableReference(
            f"--reference {root}: not a checkout of github.com/bytetriper/RAE (missing {', '.join(missing)}); "
            "pass the folder that holds src/ and configs/"
        )


def _forget_foreign_packages(src: Path) -> None:
    """Drop already-imported ``stage1``/``stage2``/``utils`` modules that do not come from ``src``."""
    for name in list(sys.modules):
        top = name.split(".")[0]
        if top not in _PACKAGES:
            continue
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if not Path(origin).resolve().is_relative_to(src):
            del sys.modules[name]


def load_reference(path: str | Path) -> Reference:
    """Import the release's modules from the checkout at ``path``; UnusableReference if that cannot work."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise UnusableReference(f"--reference {path}: no such folder "
                                "(expected a checkout of github.com/bytetriper/RAE)")
    _check_layout(root)
    src = root / "src"
    _forget_foreign_packages(src)
    if str(src) in sys.path:
        sys.path.remove(str(src))
    sys.path.insert(0, str(src))
    importlib.invalidate_caches()
    found: dict[str, Any] = {}
    for module_name, attribute, file in _NEEDED:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise UnusableReference(
                f"--reference {root}: importing {file} needs the module {exc.name!r}, which is not installed "
                f"(the release's own dependency; e.g. pip install {exc.name})"
            ) from exc
        if not hasattr(module, attribute):
            raise UnusableReference(f"--reference {root}: {file} defines no {attribute}")
        found[attribute] = getattr(module, attribute)
    return Reference(root=root, **found)
