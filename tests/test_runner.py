"""The runner end to end: exit codes, clean config errors, dry runs, run folders, Aim read-back."""
from pathlib import Path

import pytest
import torch
from aim import Repo

from rae.runner import main

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = str(ROOT / "experiments" / "latent_stats_embedded.gin")
SMALL = ["--gin_param", "embedded.size = 16", "--gin_param", "embedded.resolution = 28",
         "--gin_param", "dinov2.input_size = 28", "--gin_param", "latent_stats.batch_size = 8"]


def _run(tmp_path, *args):
    return main(["--gin", EMBEDDED, *SMALL, "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'", *args])


def _gin(tmp_path, text):
    path = tmp_path / "bad.gin"
    path.write_text(f"include '{EMBEDDED}'\n{text}\n")
    return str(path)


def test_latent_stats_run_writes_folder_and_aim_run(tmp_path, caplog):
    assert _run(tmp_path) == 0
    folder = next((tmp_path / "runs" / "latent_stats_embedded").iterdir())
    for name in ("config.gin", "operative_config.gin", "stat.pt", "DONE"):
        assert (folder / name).exists(), name
    stats = torch.load(folder / "stat.pt", weights_only=True)
    assert stats["mean"].shape == (384, 2, 2)  # per position, as RAE's calculate_stat.py writes it
    assert "RANDOM WEIGHTS" in caplog.text

    repo = Repo(str(tmp_path / "runs"))
    runs = [r.run for r in repo.query_runs("", report_mode=0).iter_runs()]
    assert len(runs) == 1
    run = runs[0]
    assert run["status"] == "finished"
    assert run["config"]["latent_stats"]["batch_size"] == 8
    assert run["accelerator"]["device"] == "cpu"
    names = {m.name for m in run.metrics()}
    assert {"latent_mean_avg", "latent_var_avg"} <= names


def test_same_command_resumes_unfinished_folder_and_changed_config_starts_new(tmp_path):
    from rae.run_dir import open_run_folder

    first = open_run_folder(str(tmp_path), "x", "a = 1\n")
    again = open_run_folder(str(tmp_path), "x", "a = 1\n")
    assert again.path == first.path and again.resumed
    changed = open_run_folder(str(tmp_path), "x", "a = 2\n")
    assert changed.path != first.path
    changed.mark_done()
    after_done = open_run_folder(str(tmp_path), "x", "a = 2\n")  # finished: found, not redone
    assert after_done.path == changed.path and after_done.finished and not after_done.resumed
    fresh = open_run_folder(str(tmp_path), "x", "a = 2\n", new=True)
    assert fresh.path not in (changed.path, first.path) and not fresh.finished


@pytest.mark.parametrize(
    "text, expected",
    [
        ("latent_stats.encoder = @encoder.dinov3()", ["bad.gin, line 2", "@encoder.dinov2"]),
        ("dinov2.varient = 'base'", ["bad.gin, line 2", "varient"]),
        ("latent_stats.encoder = @encoder.dinov2(", ["bad.gin", "unbalanced"]),
        ("include 'no_such_fragment.gin'", ["bad.gin", "no_such_fragment.gin"]),
        ("dinov2.variant = 'huge'", ["dinov2", "huge"]),
    ],
)
def test_config_errors_exit_2_with_a_message_naming_the_file(tmp_path, capsys, text, expected):
    rc = main(["--gin", _gin(tmp_path, text), "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("configuration error:")
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in err


def test_required_value_is_a_config_error_and_a_dry_run_lists_it(tmp_path, capsys):
    paper = str(ROOT / "experiments" / "latent_stats_dinov2_b.gin")
    assert main(["--gin", paper]) == 2
    assert "image_folder.root" in capsys.readouterr().err
    assert main(["--gin", paper, "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "encoder: " in out and "latent shape: (768, 16, 16)" in out
    assert "required values not set" in out and "image_folder.root" in out


def test_dry_run_prints_config_counts_and_latent_shape_and_runs_nothing(tmp_path, capsys):
    assert _run(tmp_path, "--dry_run") == 0
    out = capsys.readouterr().out
    assert "latent_stats.batch_size = 8" in out
    assert "encoder: " in out and "M parameters" in out
    assert "latent shape: (384, 2, 2)" in out
    assert not (tmp_path / "runs").exists()


def test_list_prints_plugins_with_parameters(capsys):
    assert main(["--list", "encoder"]) == 0
    out = capsys.readouterr().out
    assert "[encoder]" in out and "@encoder.dinov2(" in out and "variant=" in out
    assert main(["--list", "nonsense"]) == 2


def test_unimportable_plugin_module_is_a_config_error(capsys):
    assert main(["--import", "no_such_module_xyz", "--list"]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err


def test_failure_while_running_exits_1_and_marks_the_aim_run_failed(tmp_path, capsys):
    rc = _run(tmp_path, "--gin_param", "latent_stats.output = '/proc/forbidden/stat.pt'")
    assert rc == 1
    repo = Repo(str(tmp_path / "runs"))
    run = next(r.run for r in repo.query_runs("", report_mode=0).iter_runs())
    assert run["status"] == "failed" and "forbidden" in run["error"]
