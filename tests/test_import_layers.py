"""The package's layers point one way: training pieces never import the experiments built on them,
and data never imports training (a shared piece goes below both: `rae.io`, `rae.run_context`)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

RAE = Path(__file__).resolve().parent.parent / "rae"
FORBIDDEN = [("train", "rae.experiments"), ("data", "rae.train")]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative imports resolved against its package."""
    package = ".".join(path.relative_to(RAE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found += [(node.lineno, module)] + [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return found


def upward_imports(layer: str, banned: str) -> list[str]:
    """``file:line imports module`` for each import under ``rae/<layer>`` of ``banned`` or below it."""
    return [f"{path.relative_to(RAE.parent)}:{line} imports {module}"
            for path in sorted((RAE / layer).rglob("*.py"))
            for line, module in imported_modules(path)
            if module == banned or module.startswith(banned + ".")]


@pytest.mark.parametrize("layer, banned", FORBIDDEN, ids=[f"{layer}-not-{banned}" for layer, banned in FORBIDDEN])
def test_no_import_runs_back_up(layer, banned):
    assert upward_imports(layer, banned) == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The walk finds absolute and relative imports (so the test above can fail)."""
    package = tmp_path / "rae" / "data"
    package.mkdir(parents=True)
    (package / "bad.py").write_text("import os\nfrom rae.train.checkpoint import load\nfrom ..train import step\n")
    monkeypatch.setattr(sys.modules[__name__], "RAE", tmp_path / "rae")
    assert upward_imports("data", "rae.train") == ["rae/data/bad.py:2 imports rae.train.checkpoint",
                                                   "rae/data/bad.py:2 imports rae.train.checkpoint.load",
                                                   "rae/data/bad.py:3 imports rae.train",
                                                   "rae/data/bad.py:3 imports rae.train.step"]
