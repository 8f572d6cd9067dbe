"""Every command in README.md and docs/*.md runs as written.

Commands are taken from ```bash blocks (continuation lines joined, comments dropped, ``&&`` and ``;``
split, ``for`` loops expanded) and from inline code that starts with a command. Runner commands
(``python tools/run.py`` and ``torchrun ... tools/run.py``, the latter as a plain ``main(argv)`` call
with torchrun's world size in ``WORLD_SIZE``) are dry-run in a folder that looks like a checkout, with
the files the same document defines (code blocks opening with ``# <file name>``) written there. A dry
run reads no data, so placeholder paths (``/data/...``) pass; but a value the config leaves
``%gin.REQUIRED`` that the command does not supply (the dry run reports it as ``<required: key>``)
fails the test: a documented command must give everything its real run needs. Other commands are
checked for what can be checked offline: ``tools/bench.py`` parses and builds its config, ``tools/compare.py``
runs against an Aim repo, ``pip install`` names extras that exist, named files exist.
"""
from __future__ import annotations

import importlib.util
import itertools
import re
import runpy
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from plugins_for_tests.toy import aim_dir, aim_template, run_toy  # noqa: F401 (fixtures)

from rae.bench.versus import parse_args, parse_sides

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("python", "torchrun", "pip", "aim", "bash", "pytest", "hf")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL_WORDS = {"do", "done", "then", "fi", "else"}


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a small bash script, each as argv, ``for`` loops expanded over their values."""
    text = re.sub(r"\\\n\s*", " ", script)
    loops: dict[str, list[str]] = {}
    commands = []
    for line in text.splitlines():
        tokens = []
        for token in shlex.split(line, comments=True):
            tokens += [t for t in re.split(r"(;)$", token) if t]  # "bf16;" -> "bf16", ";"
        for is_separator, group in itertools.groupby(tokens, lambda t: t in (";", "&&", "||")):
            words = list(group)
            while words and words[0] in SHELL_WORDS:
                words = words[1:]
            if is_separator or not words:
                continue
            if words[0] == "for":
                loops[words[1]] = words[3:]  # for VAR in VALUES
                continue
            commands += expand(words, loops)
    return commands


def expand(words: list[str], loops: dict[str, list[str]]) -> list[list[str]]:
    """One argv per combination of the loop variables the command uses (an empty value drops its word)."""
    used = [name for name in loops if f"${name}" in words]
    expanded = []
    for values in itertools.product(*(loops[name] for name in used)):
        given = dict(zip(used, values))
        argv = [given.get(w[1:], w) if w.startswith("$") and w[1:] in given else w for w in words]
        expanded.append([w for w in argv if w != ""])
    return expanded


def documents() -> list[tuple[Path, str]]:
    """(document, code) of every command block and inline command of the documents."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for lang, body in FENCE.findall(text):
            if lang == "bash":
                found.append((doc, body))
        outside = FENCE.sub("", text)
        for span in re.findall(r"`([^`]+)`", outside):
            code = " ".join(span.split())
            words = code.split()
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            mention = len(words) == 2 and words[1].isalpha()  # "`aim up`", "`hf download`": a tool named in prose
            if len(words) > 1 and words[0] in PROGRAMS and not mention:
                found.append((doc, code))
    return found


def cases() -> list:
    params = []
    for doc, code in documents():
        for argv in shell_commands(code):
            label = f"{doc.name}:{' '.join(argv)[:90]}"
            params.append(pytest.param(doc, argv, id=label))
    return params


CASES = cases()


def test_commands_were_found():
    runner = [argv for _, argv in (c.values for c in CASES) if "tools/run.py" in argv]
    assert len(runner) >= 20 and any(argv[0] == "torchrun" for argv in runner)
    assert any("examples/plugins/my_backbone.py" in argv for argv in runner)


def test_commands_live_in_bash_blocks():
    """A command in an indented block or a fence of another language would escape this test."""
    for doc in DOCS:
        text = doc.read_text()
        for lang, body in FENCE.findall(text):
            starts = [line for line in body.splitlines() if line.split()[:1] and line.split()[0] in PROGRAMS]
            assert lang in ("bash", "text") or not starts, f"{doc.name}: commands in a ```{lang} block: {starts}"
        for line in FENCE.sub("", text).splitlines():
            words = line.split()
            assert not (line.startswith("    ") and words and words[0] in PROGRAMS), \
                f"{doc.name}: indented command (use a ```bash block): {line.strip()}"


def doc_files(doc: Path) -> dict[str, str]:
    """Files a document defines: code blocks whose first line is ``# <name>.py`` or ``# <name>.gin``."""
    files = {}
    for _, body in FENCE.findall(doc.read_text()):
        first = body.splitlines()[0] if body.strip() else ""
        match = re.fullmatch(r"# ([\w.-]+\.(?:py|gin))", first)
        if match:
            files[match.group(1)] = body
    return files


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A working folder like a checkout (the repository's folders linked in), nothing written to the repo."""
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", ".git") and not entry.name.startswith("."):
            (tmp_path / entry.name).symlink_to(entry)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def torchrun_world(options: list[str]) -> int:
    """Ranks a torchrun command line starts: nnodes x nproc_per_node."""
    values = dict(re.fullmatch(r"--(\w+)=?(.*)", o).groups() for o in options if o.startswith("--"))
    return int(values.get("nnodes", 1)) * int(values.get("nproc_per_node", 1))


def drop_env(argv: list[str]) -> list[str]:
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        argv = argv[1:]
    return argv


@pytest.mark.parametrize("doc, argv", [c for c in CASES if "tools/run.py" in c.values[1]])
def test_runner_command_dry_runs(doc, argv, checkout, monkeypatch, capsys):
    from rae.runner import main

    argv = drop_env(argv)
    tool = argv.index("tools/run.py")
    assert argv[:tool] == ["python"] or argv[0] == "torchrun", f"unexpected launcher {argv[:tool]}"
    monkeypatch.setenv("WORLD_SIZE", str(torchrun_world(argv[1:tool]) if argv[0] == "torchrun" else 1))
    for name, body in doc_files(doc).items():
        (checkout / name).write_text(body)
    args = argv[tool + 1:]
    rc = main(args + ([] if "--list" in args else ["--dry_run"]))
    out, err = capsys.readouterr()
    assert rc == 0, f"{' '.join(argv)} exits {rc}: {err.strip().splitlines()[-1:]}"
    assert "required values not set" not in out, \
        f"{' '.join(argv)}: a real run needs values the command does not give: {out.splitlines()[-1]}"
    assert not (checkout / "runs").exists(), "a dry run wrote a run folder"


_BENCH_CONFIGS: dict[tuple, object] = {}


@pytest.mark.parametrize("doc, argv", [c for c in CASES if "tools/bench.py" in c.values[1]])
def test_bench_command_parses_and_builds_its_config(doc, argv, monkeypatch):
    """Everything tools/bench.py does before measuring; whether a GPU is there cannot be checked here."""
    from rae.bench.cli import check_args, parse_args, planned
    from rae.bench.models import load_config

    monkeypatch.chdir(ROOT)
    assert argv[:2] == ["python", "tools/bench.py"]
    args = parse_args(argv[2:])
    args.device = None if args.device and args.device.startswith("cuda") else args.device
    check_args(args)
    key = (tuple(args.gin), tuple(args.gin_param))
    if key not in _BENCH_CONFIGS:
        _BENCH_CONFIGS[key] = load_config(args.gin, args.gin_param)
    assert planned(args.what, _BENCH_CONFIGS[key])


@pytest.mark.parametrize("doc, argv", [c for c in CASES if "tools/compare.py" in c.values[1]])
def test_compare_command_runs_on_a_repo(doc, argv, aim_dir, monkeypatch, capsys):
    """Against an Aim repo holding one run: the command as written (a query may match nothing there),
    then without its query, so the run's row is built with the command's columns and sort."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import compare as compare_tool
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert run_toy(aim_dir / "runs") == 0
    monkeypatch.chdir(aim_dir)
    assert argv[:2] == ["python", "tools/compare.py"]
    assert compare_tool.main(argv[2:]) == 0
    query = next((a for a in argv[2:] if a.startswith("run.")), None)
    if query is not None:
        assert compare_tool.main([a for a in argv[2:] if a != query]) == 0
    table = capsys.readouterr().out
    assert "toy_tracking" in table or "toy/" in table, table


@pytest.mark.parametrize("doc, argv", [c for c in CASES if "tools/aim_view.py" in c.values[1]])
def test_aim_view_command_builds_its_view_of_a_repo(doc, argv, aim_dir, monkeypatch, capsys):
    """Against an Aim repo holding one run, as a dry run (no `aim up` starts): the command as written, then
    without its query, so the view's columns are built from the run."""
    main = runpy.run_path(str(ROOT / "tools" / "aim_view.py"))["main"]
    assert run_toy(aim_dir / "runs") == 0
    monkeypatch.chdir(aim_dir)
    assert argv[:2] == ["python", "tools/aim_view.py"]
    assert main(argv[2:] + ["--dry_run"]) == 0  # as written: a query may match nothing there
    capsys.readouterr()
    assert main([a for a in argv[2:] if not a.startswith("run.")] + ["--dry_run"]) == 0
    assert capsys.readouterr().out.startswith("the view shows: status, hparams.experiment.name")


def extras() -> set[str]:
    text = (ROOT / "setup.cfg").read_text()
    section = text[text.index("[options.extras_require]"):]
    section = section[:section.index("\n[", 1)] if "\n[" in section[1:] else section
    return set(re.findall(r"^(\w+) =", section, re.MULTILINE))


TOOLS = ("tools/run.py", "tools/bench.py", "tools/compare.py", "tools/aim_view.py")


@pytest.mark.parametrize("doc, argv", [c for c in CASES if not set(TOOLS) & set(c.values[1])])
def test_other_command_names_what_exists(doc, argv):
    argv = drop_env(argv)
    program, args = argv[0], argv[1:]
    if program == "pip":
        assert args[0] == "install"
        target = args[args.index("-e") + 1]
        path, _, extra = target.partition("[")
        assert (ROOT / path / "setup.cfg").is_file(), f"pip install -e {target}: no project at {path}"
        if extra:
            assert set(extra.rstrip("]").split(",")) <= extras(), f"{target}: unknown extra (have {extras()})"
    elif program == "pytest" or (program == "python" and args[:2] == ["-m", "pytest"]):
        files = [a for a in args if not a.startswith("-") and a not in ("-m", "pytest")]
        assert all((ROOT / f.split("::")[0]).exists() for f in files), files
    elif program == "python" and args[:1] == ["tools/bench_vs_reference.py"]:
        parsed = parse_args(args[1:])  # its arguments parse; the reference checkout it names is the user's
        parse_sides(parsed.sides)
    elif program == "python" and args[:1] == ["-m"]:
        assert importlib.util.find_spec(args[1]) is not None, f"python -m {args[1]}: no such module"
    elif program == "aim":
        assert args[0] == "up" and shutil.which("aim"), "aim up: the aim command is not installed"
    elif program == "bash":
        assert (ROOT / args[0]).is_file(), f"bash {args[0]}: no such script"
    elif program == "hf":
        assert args[0] == "download" and re.fullmatch(r"[\w.-]+/[\w.-]+", args[1]), argv
        assert importlib.util.find_spec("huggingface_hub"), "hf: huggingface_hub (which has the hf command) is missing"
    else:
        pytest.fail(f"{doc.name}: a command this test does not know how to check: {' '.join(argv)}")

