"""Install metadata: extras install what they promise, and test pins stay out of what users install."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def extras() -> dict[str, list[str]]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    section = config["options.extras_require"]
    return {name: [line.strip() for line in section[name].splitlines() if line.strip()] for name in section}


def pins(requirements: list[str]) -> dict[str, str]:
    found = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([0-9.]+)", requirement)
        if match:
            found[match.group(1)] = match.group(3)
    return found


def test_no_user_facing_extra_pins_torch_except_the_tpu_pair():
    for name, requirements in extras().items():
        if name != "tpu":
            assert not {"torch", "torchvision"} & {re.split(r"[<>=\[ ]", r)[0] for r in requirements}, name


def test_the_tpu_extra_installs_a_matching_torch_and_torch_xla():
    pinned = pins(extras()["tpu"])
    assert pinned["torch_xla"] == pinned["torch"], "torch_xla X.Y.Z runs only beside torch X.Y.Z"
    major, minor, patch = pinned["torch"].split(".")
    assert pinned["torchvision"] == f"0.{int(minor) + 15}.{patch}", "torchvision must be torch's own"


def test_ci_installs_its_torch_pins_apart_and_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    command = 'pip install -e ".[test]" && python -m pytest -q'
    assert command in readme and command in ci
    assert "pip install -r .ci/constraints.txt" in ci
    assert pins((ROOT / ".ci" / "constraints.txt").read_text().splitlines())["torch"]
