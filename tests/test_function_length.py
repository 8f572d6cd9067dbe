"""No function in rae/ runs over 60 lines: a longer one is split into named steps."""
from __future__ import annotations

import ast
from pathlib import Path

RAE = Path(__file__).resolve().parent.parent / "rae"
LIMIT = 60


def long_functions(root: Path, limit: int = LIMIT) -> list[str]:
    """``path:line name (N lines)`` for every function or method under ``root`` longer than ``limit``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_rae_is_over_60_lines():
    assert long_functions(RAE) == []


def test_the_check_counts_lines_from_def_to_last_line(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT - 1))
    method = "\n".join(f"        x{i} = {i}" for i in range(LIMIT - 1))
    (package / "m.py").write_text(f"def fits():\n{body}\n\n\nclass C:\n    def over(self):\n{method}\n        return 1\n")
    assert long_functions(package) == [f"pkg/m.py:{LIMIT + 4} over ({LIMIT + 1} lines)"]  # fits: exactly 60
