"""The README's main job, experiments/quickstart.gin, end to end with fewer steps and images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from aim import Repo

from rae.runner import main

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["embedded.size = 40", "stage1.total_steps = 4", "stage1.batch_size = 8", "stage1.log_every = 2",
         "stage2.total_steps = 4", "stage2.batch_size = 8", "stage2.log_every = 2", "cache_latents.shard_size = 20",
         "sample.num_samples = 20", "sample.batch_size = 10", "sample.grid_size = 10", "eval.batch_size = 20"]


def test_quickstart_runs_every_stage_and_prints_where_to_look(tmp_path, capsys):
    args = ["--gin", str(ROOT / "experiments" / "quickstart.gin"), "--gin_param", f"run.run_root = '{tmp_path}'"]
    for binding in SHORT:
        args += ["--gin_param", binding]
    assert main(args) == 0
    out = capsys.readouterr().out
    run = next((tmp_path / "quickstart").iterdir())
    for stage in ("stats", "stage1", "cache", "stage2", "sample", "eval"):
        assert (run / stage / "STAGE_DONE.json").is_file(), stage
    with np.load(run / "sample" / "samples.npz") as samples:
        assert samples["arr_0"].shape == (20, 32, 32, 3) and np.bincount(samples["arr_1"]).tolist() == [2] * 10
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert {"fid", "sfid", "inception_score", "precision", "recall"} <= set(metrics)
    assert f"sample.grid: {run / 'sample' / 'grid.png'}" in out and f"aim up --repo {tmp_path}" in out
    names = {m.name for m in Repo(str(tmp_path)).query_metrics("").iter()}
    assert {"stage1/loss/l1", "stage2/loss", "eval/fid"} <= names
