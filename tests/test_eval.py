"""The eval experiment through the runner: ADM's metrics of an .npz against a reference, logged with context."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from aim import Repo

from rae.metrics.evaluate import features_of_npz, load_reference, sample_metrics
from rae.metrics.inception import InceptionV3
from rae.runner import main

CONFIG = """
run.experiment = @experiment.eval()
run.allow_random_weights = True
eval.split = "val"
eval.guidance = "cfg-1.5"
eval.batch_size = 8
"""


def images(path: Path, seed: int, shift: int = 0, count: int = 12) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 160, size=(count, 32, 32, 3)) + shift
    np.savez(path, arr_0=pixels.astype(np.uint8), arr_1=np.arange(count))
    return path


def inception_weights(tmp_path: Path) -> Path:
    """A perturbed Inception (freshly built, its features barely depend on the images)."""
    torch.manual_seed(0)
    net = InceptionV3()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    torch.save(net.state_dict(), tmp_path / "inception.pt")
    return tmp_path / "inception.pt"


def evaluate(tmp_path: Path, samples: Path, reference: Path, *extra: str) -> tuple[int, dict]:
    (tmp_path / "eval.gin").write_text(CONFIG + f"eval.inception_weights = '{inception_weights(tmp_path)}'\n")
    rc = main(["--gin", str(tmp_path / "eval.gin"), "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'",
               "--gin_param", f"eval.samples = '{samples}'", "--gin_param", f"eval.reference = '{reference}'", *extra])
    written = sorted((tmp_path / "runs").glob("eval/*/metrics.json"))
    return rc, json.loads(written[-1].read_text()) if written else {}


def test_an_npz_against_itself_scores_zero_and_against_other_images_more(tmp_path):
    reference = images(tmp_path / "ref.npz", seed=0)
    rc, same = evaluate(tmp_path, reference, reference)
    assert rc == 0
    assert abs(same["fid"]) < 1e-3 and abs(same["sfid"]) < 1e-3
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    rc, other = evaluate(tmp_path, images(tmp_path / "brighter.npz", seed=1, shift=90), reference, "--new_run")
    assert rc == 0 and other["fid"] > 1.0 and other["split"] == "val" and other["guidance"] == "cfg-1.5"

    fids = [(m.context.to_dict(), m.values.values_list()[-1])
            for m in Repo(str(tmp_path / "runs")).query_metrics("metric.name == 'fid'").iter()]
    assert sorted(v for _, v in fids) == sorted([same["fid"], other["fid"]])
    assert all(c == {"split": "val", "guidance": "cfg-1.5"} for c, _ in fids)


def test_a_reference_of_statistics_only_gives_fid_without_precision(tmp_path):
    reference = images(tmp_path / "ref.npz", seed=0)
    net = InceptionV3(weights_path=str(inception_weights(tmp_path)))
    net.load_pretrained(allow_random=False, log=logging.getLogger("test"))
    stats = load_reference(reference, net, batch_size=8)
    np.savez(tmp_path / "stats.npz", mu=stats.pool.mu, sigma=stats.pool.sigma,
             mu_s=stats.spatial.mu, sigma_s=stats.spatial.sigma)
    samples = images(tmp_path / "brighter.npz", seed=1, shift=90)
    rc, scores = evaluate(tmp_path, samples, tmp_path / "stats.npz")
    _, with_images = evaluate(tmp_path, samples, reference, "--new_run")
    assert rc == 0 and "precision" not in scores and "precision" in with_images
    assert abs(scores["fid"] - with_images["fid"]) < 1e-6 * with_images["fid"]


def test_a_missing_file_names_the_binding(tmp_path, capsys):
    rc, _ = evaluate(tmp_path, tmp_path / "nowhere.npz", images(tmp_path / "ref.npz", seed=0))
    assert rc == 1 and "eval.samples: no such file" in capsys.readouterr().err


def test_a_dataset_as_reference_scores_its_own_images_as_zero(tmp_path):
    from rae.data.embedded import EmbeddedDataset
    from rae.experiments.image_store import to_uint8
    data = EmbeddedDataset(size=10, resolution=32)
    pixels = to_uint8(torch.stack([data[i][0] for i in range(10)])).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "same.npz", arr_0=pixels)
    rc, scores = evaluate(tmp_path, tmp_path / "same.npz", tmp_path / "unused.npz",
                          "--gin_param", "eval.reference = @dataset.embedded()",
                          "--gin_param", "embedded.size = 10", "--gin_param", "embedded.resolution = 32")
    assert rc == 0 and abs(scores["fid"]) < 1e-3 and scores["precision"] == 1.0
    assert scores["reference"] == "EmbeddedDataset: 10 images of 32px, 10 classes"


ROOT = Path(__file__).resolve().parent.parent


def test_rfid_pipeline_scores_the_reconstructions_against_their_originals(tmp_path):
    rc = main(["--gin", str(ROOT / "experiments" / "rfid_tiny.gin"), "--gin_param", f"run.run_root = '{tmp_path}'",
               "--gin_param", "embedded.size = 12", "--gin_param", "eval.batch_size = 6",
               "--gin_param", f"eval.inception_weights = '{inception_weights(tmp_path)}'"])
    (run,) = (tmp_path / "rfid_tiny").iterdir()
    scores = json.loads((run / "eval" / "metrics.json").read_text())
    assert rc == 0 and scores["split"] == "val"
    assert {"rfid", "rsfid", "rinception_score", "rprecision", "rrecall"} <= set(scores) and "fid" not in scores
    # the same numbers as scoring the reconstruct stage's two npz files directly
    net = InceptionV3(weights_path=str(tmp_path / "inception.pt"))
    net.load_pretrained(allow_random=False, log=logging.getLogger("test"))
    reference = load_reference(run / "reconstruct" / "references.npz", net, batch_size=6)
    samples = features_of_npz(run / "reconstruct" / "reconstructions.npz", net, 6, torch.device("cpu"))
    expected = sample_metrics(samples, reference, device=torch.device("cpu"))
    assert scores["rfid"] == pytest.approx(expected["fid"], rel=1e-6) and scores["rfid"] > 0.1
    (aim_run,) = Repo(str(tmp_path)).iter_runs()  # one Aim run holds both stages
    logged = {(m.name, m.context.to_dict().get("split")) for m in aim_run.metrics()}
    assert {("eval/rfid", "val"), ("reconstruct/psnr", "val"), ("reconstruct/ssim", "val")} <= logged


def test_the_imagenet_eval_config_dry_runs_and_requires_samples_and_the_adm_reference(tmp_path, capsys):
    config = str(ROOT / "experiments" / "eval_imagenet256.gin")
    rc = main(["--gin", config, "--dry_run", "--gin_param", f"run.run_root = '{tmp_path}'"])
    out = capsys.readouterr().out
    assert rc == 0 and "eval.split = 'train'" in out and "eval.batch_size = 250" in out
    assert "eval.samples" in out and "eval.reference" in out and "required values not set" in out
    rc = main(["--gin", config, "--gin_param", f"run.run_root = '{tmp_path}'"])
    assert rc == 2 and "eval.samples" in capsys.readouterr().err
