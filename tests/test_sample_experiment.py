"""The sample experiment through the runner: batching-independent images, resume, equal labels, ADM npz."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from rae.accelerator import Accelerator
from rae.experiments.base import RunContext
from rae.runner import build_spec, main, parse_gin
from rae.tracking.tracker import Tracker

TINY_DITDH = Path(__file__).parent / "fixtures" / "gin" / "ditdh_tiny.gin"
CONFIG = f"include '{TINY_DITDH}'\n" + """
include 'decoders/vit_tiny.gin'
include 'transport/rae_linear.gin'
run.experiment = @experiment.sample()
run.allow_random_weights = True
sample.backbone = @backbone.ditdh()
ditdh.num_classes = 5
sample.autoencoder = @autoencoder.rae()
rae.encoder = @encoder.dinov2()
dinov2.variant = "small"
dinov2.input_size = 56
dinov2.weights = None
sample.transport = @loss.transport()
sample.sampler = @sampler.euler()
euler.num_steps = 3
sample.guidance = @guidance.cfg()
cfg.scale = 1.5
sample.num_samples = 10
sample.labels = "equal"
sample.grid_size = 5
sample.grid_rows = 5
"""


def sample(tmp_path: Path, name: str, *bindings: str) -> tuple[int, Path | None]:
    (tmp_path / f"{name}.gin").write_text(CONFIG)
    args = ["--gin", str(tmp_path / f"{name}.gin"), "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'"]
    for binding in bindings:
        args += ["--gin_param", binding]
    rc = main(args)
    folders = sorted((tmp_path / "runs" / name).glob("*"))
    return rc, folders[-1] if folders else None


def arrays(run: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(run / "samples.npz") as data:
        return data["arr_0"], data["arr_1"]


def test_batching_does_not_change_the_images_and_labels_are_equal_per_class(tmp_path):
    rc3, by3 = sample(tmp_path, "by3", "sample.batch_size = 3")
    rc5, by5 = sample(tmp_path, "by5", "sample.batch_size = 5")
    assert rc3 == rc5 == 0
    images, labels = arrays(by3)
    assert images.dtype == np.uint8 and images.shape == (10, 32, 32, 3)
    assert np.bincount(labels).tolist() == [2] * 5
    np.testing.assert_array_equal(images, arrays(by5)[0])
    np.testing.assert_array_equal(labels, arrays(by5)[1])
    assert images.std() > 0 and (by3 / "grid.png").is_file()


def test_an_interrupted_run_makes_only_the_missing_images(tmp_path, capsys):
    rc, run = sample(tmp_path, "resume", "sample.batch_size = 4")
    assert rc == 0
    first = arrays(run)
    for index in (1, 6, 9):
        (run / "images" / f"{index:06d}.png").unlink()
    (run / "samples.npz").unlink()
    (run / "DONE").unlink()
    capsys.readouterr()
    rc, again = sample(tmp_path, "resume", "sample.batch_size = 4")
    assert rc == 0 and again == run and "made_here: 3" in capsys.readouterr().out
    np.testing.assert_array_equal(arrays(run)[0], first[0])


def test_equal_labels_need_a_multiple_of_the_classes(tmp_path, capsys):
    rc, _ = sample(tmp_path, "bad", "sample.num_samples = 7")
    assert rc == 2 and "divisible" in capsys.readouterr().err


def test_two_ranks_write_exactly_the_files_of_one_process(tmp_path):
    (tmp_path / "shards.gin").write_text(CONFIG)
    parse_gin([str(tmp_path / "shards.gin")], ["sample.batch_size = 2"])
    experiment = build_spec(str(tmp_path / "shards.gin")).experiment
    log = logging.getLogger("test")
    experiment.load_weights(allow_random=True, log=log)

    def run(folder: Path, rank: int, world_size: int) -> dict:
        acc = Accelerator(torch.device("cpu"), rank=rank, world_size=world_size)
        return experiment.run(RunContext(acc, Tracker(), folder, seed=0, log=log))

    run(tmp_path / "one", 0, 1)
    run(tmp_path / "two", 1, 2)  # rank 1 makes the odd indices, and packs nothing
    assert sorted(p.name for p in (tmp_path / "two" / "images").glob("*.png")) == \
        [f"{i:06d}.png" for i in range(1, 10, 2)]
    assert not (tmp_path / "two" / "samples.npz").exists()
    run(tmp_path / "two", 0, 2)
    for ours, theirs in zip(arrays(tmp_path / "one"), arrays(tmp_path / "two")):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("config, guidance", [
    ("sample_ditdh_xl.gin", ["GUIDANCE = @guidance.cfg()", "cfg.scale = 1.0", "cfg.t_max = 1.0"]),
    ("sample_ditdh_xl_ag.gin", ["guidance: Autoguidance, 196.5M", "autoguidance.scale = 1.42"]),
])
def test_paper_sampling_configs_dry_run_offline(config, guidance, tmp_path, capsys):
    root = Path(__file__).resolve().parent.parent
    rc = main(["--gin", str(root / "experiments" / config), "--dry_run", "--gin_param", f"run.run_root = '{tmp_path}'"])
    out = capsys.readouterr().out
    assert rc == 0 and "backbone: DiTDH, 838.7M parameters" in out
    assert "sample.num_samples = 50000" in out and "sample.labels = 'equal'" in out and "ode.num_steps = 50" in out
    assert all(line in out for line in guidance), out
    assert "run.precision = 'fp32'" in out and "sample.quantize = 'truncate'" in out  # as released
