"""Pipelines: stages in subfolders of one run, wired by `@run_file()` paths, resumed stage by stage."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from aim import Repo

from rae.run_file import RunFile, set_run_root
from rae.runner import main

TINY_DITDH = Path(__file__).parent / "fixtures" / "gin" / "ditdh_tiny.gin"
# latent stats -> a normalised latent cache -> stage 2 on the cache, one random DINOv2-S shared
# by every stage (a gin singleton), on 16 embedded images at 56 px.
PIPELINE = f"include '{TINY_DITDH}'\n" + """
include 'data/embedded.gin'
include 'decoders/vit_tiny.gin'
include 'transport/rae_linear.gin'

run.experiment = @experiment.pipeline()
run.allow_random_weights = True
pipeline.stages = {
    "stats": @experiment.latent_stats(),
    "cache": @experiment.cache_latents(),
    "train": @experiment.stage2(),
}
embedded.size = 16
embedded.resolution = 56
ENC/singleton.constructor = @encoder.dinov2
dinov2.variant = "small"
dinov2.input_size = 56
dinov2.weights = None

latent_stats.encoder = @ENC/singleton()
latent_stats.dataset = @dataset.embedded()
latent_stats.batch_size = 8
latent_stats.num_workers = 0

AE/singleton.constructor = @autoencoder.rae
rae.encoder = @ENC/singleton()
rae.stats_path = @stats/run_file()
stats/run_file.relative = "stats/stat.pt"
cache_latents.autoencoder = @AE/singleton()
cache_latents.dataset = @dataset.embedded()
cache_latents.path = @cache/run_file()
cache/run_file.relative = "cache/latents"
cache_latents.shard_size = 8
cache_latents.batch_size = 8
cache_latents.num_workers = 0
cache_latents.dtype = "float32"

stage2.backbone = @backbone.ditdh()
stage2.transport = @loss.transport()
stage2.latents = @dataset.latent_cache()
latent_cache.path = @cache/run_file()
stage2.autoencoder = @AE/singleton()
ditdh.num_classes = 10
stage2.batch_size = 4
stage2.total_steps = 3
stage2.num_workers = 0
stage2.log_every = 1
stage2.optim = @optim()
optim.checkpoint_every = 3
stage2.sample_every = 3
stage2.sample_steps = 2
"""


def run_pipeline(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    config = tmp_path / "pipe.gin"
    config.write_text(PIPELINE)
    rc = main(["--gin", str(config), "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'", *extra])
    folders = sorted((tmp_path / "runs" / "pipe").iterdir()) if (tmp_path / "runs" / "pipe").exists() else []
    return rc, folders[-1] if folders else tmp_path


def test_stages_run_in_order_in_subfolders_reading_each_others_files(tmp_path):
    rc, run = run_pipeline(tmp_path)
    assert rc == 0
    assert (run / "stats" / "stat.pt").is_file() and (run / "train" / "ema.pt").is_file()
    assert (run / "cache" / "latents").is_dir()
    # the cache holds latents normalised with the stats the first stage computed
    stats = torch.load(run / "stats" / "stat.pt", weights_only=True)
    from rae.data.latent_cache import LatentCache
    cache = LatentCache(str(run / "cache" / "latents"))
    latents = torch.stack([cache[i][0] for i in range(len(cache))]).double()
    per_channel = latents.transpose(0, 1).flatten(1)
    assert per_channel.mean(1).abs().max() < 1e-3 and (per_channel.var(1) - 1).abs().max() < 0.1
    assert stats["mean"].shape == (384, *latents.shape[2:])  # per position, RAE's layout

    # every stage logs into the one Aim run, under its name
    run_names = {m.name for m in Repo(str(tmp_path / "runs")).query_metrics("").iter()}
    assert {"train/loss", "train/grad_norm"} <= run_names


def test_rerunning_skips_finished_stages_and_finishes_the_rest(tmp_path):
    rc, run = run_pipeline(tmp_path)
    assert rc == 0
    stats_written = (run / "stats" / "stat.pt").stat().st_mtime_ns
    (run / "DONE").unlink()
    (run / "train" / "STAGE_DONE.json").unlink()
    (run / "train" / "ema.pt").unlink()
    rc, again = run_pipeline(tmp_path)
    assert rc == 0 and again == run
    assert (run / "stats" / "stat.pt").stat().st_mtime_ns == stats_written
    assert (run / "train" / "ema.pt").is_file()


def test_a_dry_run_builds_every_stage_and_counts_their_models(tmp_path, capsys):
    rc, _ = run_pipeline(tmp_path, "--dry_run")
    out = capsys.readouterr().out
    assert rc == 0
    assert "train.backbone: DiTDH" in out and "stats.encoder: DINOv2" in out
    assert not (tmp_path / "runs").exists()


def test_bad_stages_are_config_errors(tmp_path, capsys):
    rc, _ = run_pipeline(tmp_path, "--gin_param", "pipeline.stages = {'a b': @experiment.latent_stats()}")
    assert rc == 2 and "stage name 'a b'" in capsys.readouterr().err


def test_run_files_resolve_only_inside_a_run(tmp_path):
    path = RunFile("stats/stat.pt")
    with pytest.raises(RuntimeError, match="only while a run is executing"):
        Path(path)
    set_run_root(tmp_path)
    try:
        assert Path(path) == tmp_path / "stats" / "stat.pt"
    finally:
        set_run_root(None)
    with pytest.raises(ValueError, match="inside the run folder"):
        RunFile("../elsewhere.pt")


def test_a_stage_config_error_stops_the_pipeline_before_its_run_folder(tmp_path, capsys):
    rc, _ = run_pipeline(tmp_path, "--gin_param", "optim.ema_decay = 1.5")
    err = capsys.readouterr().err
    assert rc == 2 and "pipeline stage 'train'" in err and "ema_decay" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "pipe").exists()
