"""What a new user meets: reruns of finished runs, honest log lines, readable counts, comparable pipelines."""
from __future__ import annotations

import logging
import re
import runpy
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
from plugins_for_tests.toy import GIN_FILE, aim_dir, aim_runs, aim_template, run_toy  # noqa: F401 (fixtures)
from torch import nn

from rae.experiments.base import Experiment, RunContext
from rae.registry import EXPERIMENTS
from rae.run_file import set_run_root
from rae.runner import build_spec, canonical_tags, format_count, main, parse_gin
from rae.tracking.compare import compare
from rae.weights import WeightsNotFound, missing_weights, unwritten_folders

ROOT = Path(__file__).resolve().parent.parent
TOY = "plugins_for_tests.toy"
README_COMPARE = [block for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
                  if block.startswith("python tools/compare.py")]


@EXPERIMENTS.register("toy_score")
class ToyScore(Experiment):
    """Tracks an FID as the eval stage does (a guidance in its context), for a toy pipeline."""

    kind = "toy_score"

    def __init__(self, backbone: nn.Module, guidance: Any = None, fid: float = 12.5) -> None:
        self.backbone, self.guidance, self.fid = backbone, guidance, fid

    def tags(self) -> list[str]:
        return [self.kind, type(self.backbone).__name__]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        ctx.tracker.track("fid", self.fid, 0, {"split": "train", "guidance": f"cfg-{self.guidance.scale}"})
        return {"fid": self.fid}


PIPELINE = f"""
include '{GIN_FILE}'
run.experiment = @experiment.pipeline()
pipeline.stages = {{"train": @experiment.toy_loss(), "eval": @experiment.toy_score()}}
toy_score.backbone = @backbone.toy_mlp()
toy_score.guidance = @guidance.toy_guidance()
toy_guidance.scale = 2.0
"""


def _rows(table: str) -> list[list[str]]:
    lines = table.splitlines()
    return [line.split() for line in [lines[0], *lines[2:]]]


# ---------------------------------------------------------------- a rerun of a finished run
def test_rerunning_a_finished_run_says_where_it_is_and_how_to_start_afresh(aim_dir, capsys):
    assert run_toy(aim_dir) == 0
    first = capsys.readouterr().out
    assert run_toy(aim_dir) == 0
    out = capsys.readouterr().out
    (folder,) = (aim_dir / "toy_tracking").iterdir()
    assert out.startswith("nothing to do: a run with this exact config finished on ")
    assert f"its outputs are in {folder}\nto run it again in a new folder, add --new_run" in out
    assert "done in" in first and "done in" not in out
    assert len(aim_runs(aim_dir)) == 1  # nothing was run (nor tracked) again

    assert run_toy(aim_dir, "toy_loss.steps = 3") == 0  # another config runs
    assert main(["--import", TOY, "--gin", str(GIN_FILE), "--gin_param", f"run.run_root = '{aim_dir}'",
                 "--new_run"]) == 0
    assert len(list((aim_dir / "toy_tracking").iterdir())) == 3
    assert "nothing to do" not in capsys.readouterr().out


def test_a_finished_folder_is_found_even_behind_a_newer_run_of_another_config(tmp_path):
    from rae.run_dir import choose_run_folder, open_run_folder

    done = open_run_folder(str(tmp_path), "x", "a = 1\n")
    done.mark_done()
    (tmp_path / "x" / "29991231-235959").mkdir()  # a newer folder of another config
    (tmp_path / "x" / "29991231-235959" / "config.gin").write_text("a = 2\n")
    again = choose_run_folder(str(tmp_path), "x", "a = 1\n")
    assert again.path == done.path and again.finished and not again.resumed
    assert choose_run_folder(str(tmp_path), "x", "a = 1\n", new=True).finished is None


# ---------------------------------------------------------------- honest log lines
def test_stage1_without_lpips_and_gan_neither_announces_them_nor_logs_zeros(tmp_path, caplog, monkeypatch):
    import rae.runner as runner
    from rae.tracking.tracker import Tracker

    names: set[str] = set()

    class Recorder(Tracker):
        def __init__(self, **kwargs: Any) -> None:
            pass

        def track(self, name, value, step, context=None):
            names.add(name)

    monkeypatch.setattr(runner, "AimTracker", Recorder)
    args = ["--gin", str(ROOT / "experiments" / "stage1_tiny.gin"), "--gin_param", f"run.run_root = '{tmp_path}'"]
    for binding in ("stage1.lpips = None", "stage1.lpips_weight = 0.0", "stage1.discriminator = None",
                    "stage1.disc_weight = 0.0", "stage1.diffaug = None", "embedded.size = 8", "stage1.total_steps = 2",
                    "stage1.log_every = 1", "stage1.grid_every = 0", "optim.checkpoint_every = 2"):
        args += ["--gin_param", binding]
    with caplog.at_level(logging.INFO):  # the root's level: the runner leaves the "rae" logger's unset
        assert main(args) == 0
    announced = next(m for m in caplog.messages if m.startswith("stage1: 2 steps"))
    assert announced.endswith("loss: L1, no LPIPS, no GAN"), announced
    steps = [m for m in caplog.messages if m.startswith("stage1: step ")]
    assert len(steps) == 2 and all("ETA" in m for m in steps)
    assert not any(term in m for m in steps for term in ("lpips", "gan_g", "adaptive_weight"))
    assert {"loss", "loss/l1"} <= names and not names & {"loss/lpips", "loss/gan_g", "adaptive_weight"}


def test_a_stage_reading_a_file_a_later_stage_writes_is_told_so(tmp_path, caplog):
    later = tmp_path / "run" / "stage1"
    with unwritten_folders({later: "stage1"}):
        with caplog.at_level(logging.WARNING, logger="rae"):
            missing_weights("the RAE decoder", str(later / "decoder_ema.pt"), "", True, logging.getLogger("rae"))
        with pytest.raises(WeightsNotFound, match="not written yet: pipeline stage 'stage1' writes it"):
            missing_weights("the RAE decoder", str(later / "decoder_ema.pt"), "", False, logging.getLogger("rae"))
    assert "not written yet: pipeline stage 'stage1' writes it" in caplog.messages[0]
    missing_weights("the RAE decoder", str(later / "decoder_ema.pt"), "", True, logging.getLogger("rae"))
    assert "not written yet" not in caplog.messages[-1]  # outside a pipeline stage: absent weights


def test_the_quickstart_stage1_reads_no_stats_nor_decoder_of_its_own(tmp_path):
    parse_gin([str(ROOT / "experiments" / "quickstart.gin")], [f"run.run_root = '{tmp_path}'"])
    set_run_root(tmp_path)
    try:
        with torch.device("meta"):
            stage1 = build_spec("quickstart.gin").experiment.stages["stage1"]
    finally:
        set_run_root(None)
    assert stage1.autoencoder.stats_path is None and stage1.autoencoder.decoder_path is None


def test_the_quickstart_trains_and_judges_on_one_setting_of_the_embedded_set(tmp_path):
    """The judge and the held-out images are drawn like the training images (experiments/quickstart.gin, "data")."""
    parse_gin([str(ROOT / "experiments" / "quickstart.gin")], [f"run.run_root = '{tmp_path}'"])
    set_run_root(tmp_path)
    try:
        with torch.device("meta"):
            stages = build_spec("quickstart.gin").experiment.stages
    finally:
        set_run_root(None)
    datasets = [stages["encoder"].dataset, stages["classifier"].dataset.data, stages["classifier"].held_out,
                stages["stage1"].dataset, stages["eval"].reference, stages["eval"].held_out, stages["trace"].held_out]
    settings = {(d.shape_scale, d.shape_offset, d.shape_rotation, d.clutter) for d in datasets}
    assert settings == {((0.5, 0.75), 0.2, 0.5, 1.0)}, settings


def test_sampling_with_a_random_decoder_is_a_warning(tmp_path, caplog):
    from test_sample_experiment import CONFIG

    (tmp_path / "s.gin").write_text(CONFIG)
    parse_gin([str(tmp_path / "s.gin")], [])
    spec = build_spec("s.gin")
    with caplog.at_level(logging.INFO, logger="rae"):
        spec.experiment.load_weights(True, logging.getLogger("rae"))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("RANDOM WEIGHTS for the decoder of sample.autoencoder") for m in warned), warned
    torch.save(spec.experiment.backbone.state_dict(), tmp_path / "ema.pt")
    parse_gin([str(tmp_path / "s.gin")], [f"sample.weights_path = '{tmp_path / 'ema.pt'}'"])
    with pytest.raises(WeightsNotFound, match="no pretrained weights for the decoder of sample.autoencoder"):
        build_spec("s.gin").experiment.load_weights(False, logging.getLogger("rae"))  # refused unless allowed


def test_parameter_counts_of_tiny_models_are_readable(tmp_path, capsys):
    assert [format_count(n) for n in (76, 999, 1804, 12_345, 999_960, 415_056_640, 1_200_000_000)] == [
        "76", "999", "1.8K", "12.3K", "1.0M", "415.1M", "1.2B"]
    assert main(["--import", TOY, "--gin", str(GIN_FILE), "--gin_param", "toy_mlp.hidden_size = 200",
                 "--dry_run"]) == 0
    assert "backbone: ToyMLP, 1.8K parameters (1,804)" in capsys.readouterr().out


# ---------------------------------------------------------------- a pipeline in the tracker
def test_a_pipeline_run_fills_the_default_compare_columns_with_one_spelling_per_tag(aim_dir, caplog, capsys):
    (aim_dir / "toy_pipeline.gin").write_text(PIPELINE)
    with caplog.at_level(logging.INFO):  # the root's level: the runner leaves the "rae" logger's unset
        assert main(["--import", TOY, "--gin", str(aim_dir / "toy_pipeline.gin"),
                     "--gin_param", f"run.run_root = '{aim_dir}'"]) == 0
    assert any(m.startswith("pipeline: stage 1/2 train (toy) in ") for m in caplog.messages)
    assert any(m.startswith("pipeline: stage 2/2 eval done in ") for m in caplog.messages)

    (run,) = aim_runs(aim_dir)
    assert sorted(run.tags) == ["pipeline", "toy", "toy_mlp", "toy_score"]

    header, row = _rows(compare(str(aim_dir)))
    assert header == ["name", "status", "experiment.name", "backbone.name", "run.seed", "guidance.name",
                      "guidance.scale", "train/loss:last", "eval/fid{guidance=cfg-2.0,split=train}:last"]
    assert row[1:] == ["finished", "pipeline", "toy_mlp", "0", "toy_guidance", "2", "0.125", "12.5"]

    # the README's commands, verbatim but for the repo and the backbone's name
    compare_main = runpy.run_path(str(ROOT / "tools" / "compare.py"))["main"]
    for command in README_COMPARE:
        args = [arg.replace('"ditdh"', '"toy_mlp"') for arg in shlex.split(command.replace("\\\n", " "))]
        assert args[:4] == ["python", "tools/compare.py", "--repo", "runs"]
        capsys.readouterr()
        assert compare_main(["--repo", str(aim_dir), *args[4:]]) == 0
        header, row = _rows(capsys.readouterr().out)
        assert "-" not in row and any(title.startswith("eval/fid{") for title in header), header
    assert len(README_COMPARE) == 2


def test_class_names_and_plugin_names_give_one_tag():
    import rae.plugins

    rae.plugins.import_builtin()
    assert canonical_tags(["stage2", "DiTDH", "DINOv2", "dinov2", "ditdh", "EulerSampler", "Custom"]) == [
        "stage2", "ditdh", "dinov2", "euler", "custom"]
