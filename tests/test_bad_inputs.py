"""Every error clear: bad bindings, run locations, plugin modules and input files exit 2 with one
paragraph naming the binding or the file, without a traceback, and (for config mistakes) before a
run folder or an Aim run exists."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rae.data.latent_cache import INDEX_FILE, LatentCache, read_index, shard_path
from rae.runner import main
from rae.train.checkpoint import UnreadableFile
from rae.weights import read_state_dict
from test_crash_safety import ROOT, light_stage2_gin, tiny_cache
from test_sample_experiment import CONFIG as SAMPLE_CONFIG


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tiny_cache(tmp_path_factory.mktemp("cache"))


def run_bad(tmp_path: Path, gin_file: Path | str, *bindings: str, extra: tuple[str, ...] = ()) -> int:
    """The runner's exit code for a config with extra bindings, run under ``tmp_path/runs``."""
    args = ["--gin", str(gin_file), "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'", *extra]
    for binding in bindings:
        args += ["--gin_param", binding]
    return main(args)


LONG_NAME = "n" * 300
CONFIG_CASES = [
    # types, checked where gin binds them
    ("stage2.total_steps = 'ten'", "`stage2.total_steps = 'ten'`: expected int"),
    ("optim.lr = 'fast'", "`optim.lr = 'fast'`: expected float"),
    ("stage2.batch_size = 8.5", "stage2.batch_size"),
    ("stage2.batch_size = True", "stage2.batch_size"),
    ("optim.ema_decay = 'high'", "optim.ema_decay"),
    ("optim.betas = (0.9,)", "optim.betas"),
    ("optim.betas = 0.9", "optim.betas"),
    ("optim.grad_clip = 'no'", "optim.grad_clip"),
    ("stage2.sample_labels = 'all'", "stage2.sample_labels"),
    ("stage2.sample_labels = [0, 'a']", "stage2.sample_labels"),
    ("stage2.backbone = 3", "`stage2.backbone = 3`: expected Backbone"),
    ("stage2.compile = 'yes'", "stage2.compile"),
    ("stage2.log_every = 2.5", "stage2.log_every"),
    ("stage2.num_workers = None", "stage2.num_workers"),
    ("ditdh.depth = 'two'", "ditdh.depth"),
    ("ditdh.hidden_size = 64.0", "ditdh.hidden_size"),
    ("run.seed = 'one'", "run.seed"),
    ("run.allow_random_weights = 'yes'", "run.allow_random_weights"),
    # values, checked by the experiment against the config and the world size
    ("run.seed = -1", "run.seed = -1"),
    ("optim.checkpoint_every = 0", "optim.checkpoint_every = 0"),
    ("optim.checkpoint_every = -5", "optim.checkpoint_every"),
    ("optim.ema_decay = 1.5", "optim.ema_decay = 1.5"),
    ("optim.ema_decay = -0.1", "optim.ema_decay"),
    ("stage2.sample_steps = 0", "sample_steps = 0"),
    ("stage2.sample_steps = 1", "sample_steps = 1"),
    ("stage2.sample_every = -1", "stage2.sample_every"),
    ("stage2.sample_labels = [0, 99]", "stage2.sample_labels [0, 99]"),
    ("stage2.sample_labels = [-1]", "stage2.sample_labels"),
    ("stage2.batch_size = 7", "per-rank batch 7"),
    ("stage2.micro_batch_size = 3", "stage2.micro_batch_size 3"),
    ("optim.lr = 0.0", "optim.lr = 0.0"),
    ("optim.lr = -1e-3", "optim.lr"),
    ("stage2.total_steps = 0", "stage2.total_steps = 0"),
    ("stage2.log_every = 0", "stage2.log_every = 0"),
    ("stage2.keep_checkpoints = 0", "stage2.keep_checkpoints"),
    ("optim.warmup_steps = -1", "optim.warmup_steps"),
    ("optim.weight_decay = -0.1", "optim.weight_decay"),
    ("optim.betas = (0.9, 1.5)", "optim.betas"),
    ("stage2.num_workers = -1", "stage2.num_workers"),
    ("optim.grad_clip = 0.0", "optim.grad_clip"),
    ("optim.eps = 0.0", "optim.eps"),
    ("optim.final_lr = -1.0", "optim.final_lr"),
    ("stage2.parallel = 'zero'", "stage2.parallel"),
    ("stage2.total_epochs = 2.0", "not both"),
    ("run.precision = 'fp8'", "run.precision"),
    # where the run folder goes
    (f"run.name = '{LONG_NAME}'", "run.name"),
    ("run.name = '../escape'", "run.name"),
]


@pytest.mark.parametrize("binding, expected", CONFIG_CASES, ids=[c[0][:40] for c in CONFIG_CASES])
def test_config_mistakes_exit_2_naming_the_binding_before_any_run_folder(tmp_path, capsys, cache, binding,
                                                                          expected):
    rc = run_bad(tmp_path, light_stage2_gin(tmp_path, cache), binding)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert expected in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "light").exists()  # no run folder, so no Aim run either


def test_world_size_checks_run_before_the_run(tmp_path, capsys, cache, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # a dry run checks against the world size torchrun would give
    rc = run_bad(tmp_path, light_stage2_gin(tmp_path, cache), extra=("--dry_run",))
    err = capsys.readouterr().err
    assert rc == 2 and "stage2.batch_size 8 is not divisible by the 3 ranks" in err


def test_a_dataset_smaller_than_a_batch_is_refused_before_the_run(tmp_path, capsys):
    rc = run_bad(tmp_path, ROOT / "experiments" / "stage2_tiny.gin", "embedded.size = 4")
    err = capsys.readouterr().err
    assert rc == 2 and "stage2.batch_size 8 is larger than the dataset (4 samples" in err
    assert not (tmp_path / "runs" / "stage2_tiny").exists()


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_an_unusable_run_root_exits_2_with_the_path_and_the_reason(tmp_path, capsys, cache, kind):
    if kind == "unwritable" and os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    root = tmp_path / "root"
    if kind == "file":
        root.write_text("a file")
    else:
        root.mkdir()
        root.chmod(0o500)
    try:
        rc = main(["--gin", str(light_stage2_gin(tmp_path, cache)), "--gin_param", f"run.run_root = '{root}'"])
    finally:
        root.chmod(0o700)
    err = capsys.readouterr().err
    assert rc == 2 and str(root) in err and "Traceback" not in err
    assert ("is a file" in err) if kind == "file" else ("not writable" in err)


# ---- unreadable input files ----------------------------------------------------------------------
def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def test_unreadable_state_dicts_name_the_file_and_what_was_expected(tmp_path):
    empty = tmp_path / "decoder.pt"
    empty.write_bytes(b"")
    text = tmp_path / "stat.pt"
    text.write_text("elephant\n")
    torch.save({"w": torch.ones(1000)}, tmp_path / "cut.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    for path, reason in ((empty, "the file is empty"), (text, "not a torch.save file"),
                         (_truncate(tmp_path / "cut.pt"), "truncated"),
                         (tmp_path / "bad.safetensors", "safetensors")):
        with pytest.raises(UnreadableFile) as info:
            read_state_dict(path)
        assert str(path) in str(info.value) and reason in str(info.value)


def test_a_cut_off_cache_index_and_a_truncated_shard_are_named(tmp_path):
    folder = tiny_cache(tmp_path / "cache")
    _truncate(shard_path(folder, 0))
    with pytest.raises(UnreadableFile, match="shard-00000.pt: cannot read it as a latent cache shard"):
        LatentCache(str(folder))[0]
    index = folder / INDEX_FILE
    index.write_text(index.read_text()[:40])
    with pytest.raises(UnreadableFile, match=f"{index}: cannot read it as a latent cache index"):
        read_index(folder)


# the sample experiment's tiny config, unguided: only its weights file is under test here
SAMPLE_GIN = SAMPLE_CONFIG + "sample.guidance = @guidance.none()\n"


@pytest.mark.parametrize("what", ["index", "shard", "decoder", "stats", "weights_path"])
def test_unreadable_input_files_exit_2_naming_the_file(tmp_path, capsys, what):
    folder = tiny_cache(tmp_path / "cache")
    bad = tmp_path / "bad.pt"
    if what == "index":
        bad = folder / INDEX_FILE
        bad.write_text(bad.read_text()[:30])
    elif what == "shard":
        bad = _truncate(shard_path(folder, 0))
    elif what == "stats":
        bad.write_text("mean, var\n")
    elif what == "weights_path":
        torch.save({"ema": {"w": torch.ones(1000)}}, bad)
        _truncate(bad)
    else:
        bad.write_bytes(b"")
    if what in ("index", "shard"):
        gin_file, bindings = light_stage2_gin(tmp_path, folder), ["stage2.total_steps = 1"]
    elif what == "weights_path":
        gin_file, bindings = tmp_path / "sample.gin", [f"sample.weights_path = '{bad}'"]
        gin_file.write_text(SAMPLE_GIN)
    else:
        gin_file = ROOT / "experiments" / "stage2_tiny.gin"
        bindings = [f"rae.{'decoder_path' if what == 'decoder' else 'stats_path'} = '{bad}'"]
    rc = run_bad(tmp_path, gin_file, *bindings)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(bad) in err and "Traceback" not in err


# ---- --import ------------------------------------------------------------------------------------
IMPORT_CASES = {
    "raising": ("import os\nVALUE = os.environ['RAE_NO_SUCH_VARIABLE']\n", ["line 2", "KeyError"]),
    "broken_syntax": ("def f(:\n    pass\n", ["SyntaxError", "line 1"]),
    "taken_name": ("from rae.registry import ENCODERS\n\n@ENCODERS.register('dinov2')\nclass Mine:\n    pass\n",
                   ["RegistryError", "encoder 'dinov2' is already registered"]),
}


@pytest.mark.parametrize("case", sorted(IMPORT_CASES))
def test_a_plugin_module_that_fails_to_import_exits_2_naming_it(tmp_path, capsys, monkeypatch, case):
    source, expected = IMPORT_CASES[case]
    module = f"rae_test_plugin_{case}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["--import", module, "--list", "encoder"]) == 2
    err = capsys.readouterr().err
    assert f"--import {module}" in err and "Traceback" not in err
    for fragment in expected:
        assert fragment in err, err
