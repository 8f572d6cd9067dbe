"""Architecture rules of the repository that are easy to break by accident."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gin_folder_is_not_a_package():
    """`gin/` at the repo root must not shadow the gin-config package."""
    assert not (ROOT / "gin" / "__init__.py").exists()
    out = subprocess.run(
        [sys.executable, "-c", "import gin, sys; print(gin.parse_config_file.__module__)"],
        cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("gin")


def test_library_code_has_no_gin_outside_the_registration_layer():
    """Models, losses and loops take plain arguments; gin lives in the runner and the registry."""
    allowed = {"registry.py", "runner.py", "run_params.py", "config_errors.py"}
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "rae").rglob("*.py")
        if p.name not in allowed and any(
            line.strip().startswith(("import gin", "from gin")) for line in p.read_text().splitlines()
        )
    ]
    assert offenders == []


def test_checkpoints_load_with_weights_only():
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in list((ROOT / "rae").rglob("*.py")) + list((ROOT / "tools").rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "torch.load(" in line and "weights_only=True" not in line
    ]
    assert offenders == []


def test_docs_and_configs_cite_only_files_in_the_repository():
    """A user's clone has docs/paper_configs.md, not the team's shared notes outside the repository."""
    outside = ("PAPER_" + "CONFIGS", "../" + "shared")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    texts = [ROOT / f for f in tracked if f.endswith((".py", ".gin", ".md", ".cfg", ".sh", ".txt"))]
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in texts if p.is_file()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if any(o in line for o in outside)]
    assert offenders == []
    assert (ROOT / "docs" / "paper_configs.md").is_file()
