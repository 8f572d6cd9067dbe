"""The embedded dataset's judge (shape and colour apart), its scores, and the eval stage around it:
ADM's Inception metrics only with real Inception weights, never from a random Inception."""
from __future__ import annotations

import json
from dataclasses import replace
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from aim import Repo

from rae.data.embedded import EmbeddedDataset
from rae.experiments.classifier import CLASSIFIER_OPTIM, TrainClassifier
from rae.experiments.image_store import to_uint8
from rae.metrics.classifier import EmbeddedClassifier, Judgement, ShapeSwaps, class_scores, classifier_frechet
from rae.metrics.inception import WEIGHTS_FILE
from rae.runner import main
from rae.weights import WeightsNotFound
from test_eval import inception_weights
from test_latent_cache import Recorder, run_experiment

INCEPTION_KEYS = {"fid", "sfid", "inception_score", "precision", "recall"}
JUDGE_KEYS = {"class_accuracy", "shape_accuracy", "colour_accuracy", "classifier_fd", "classifier_fd_floor",
              "real_class_accuracy", "real_shape_accuracy", "real_colour_accuracy"}


def test_in_memory_images_and_own_shapes_equal_the_rendering():
    data = EmbeddedDataset(size=30, resolution=32)
    kept = EmbeddedDataset(size=30, resolution=32, in_memory=True)
    indices = [3, 7, 29]
    assert torch.equal(torch.stack([kept[i][0] for i in indices]), data.images(indices))
    assert torch.equal(data.images(indices, shapes=[3, 7, 9]), data.images(indices))
    other = data.images(indices, shapes=[4, 7, 9])
    assert not torch.equal(other[0], data.images([3])[0]) and torch.equal(other[1:], data.images(indices)[1:])


def test_shape_swaps_draw_shapes_apart_from_colours():
    data = EmbeddedDataset(size=1000, resolution=16)
    none, every = ShapeSwaps(data, swap=0.0), ShapeSwaps(data, swap=1.0)
    items = none.__getitems__([0, 1, 12])
    assert [t.tolist() for _, t in items] == [[0, 0], [1, 1], [2, 2]]
    assert torch.equal(torch.stack([x for x, _ in items]), data.images([0, 1, 12]))
    shapes = np.array([every.shape_of(i) for i in range(1000)])
    labels = np.arange(1000) % 10
    assert 0.05 < (shapes == labels).mean() < 0.15 and set(shapes) == set(range(10))
    assert [t[1].item() for _, t in every.__getitems__(list(range(20)))] == list(labels[:20])
    with pytest.raises(ValueError, match="classifier.swap"):
        ShapeSwaps(data, swap=1.5)


def test_class_scores_need_both_heads_to_agree_with_the_label():
    labels = torch.tensor([0, 1, 2, 3])
    shape = torch.nn.functional.one_hot(torch.tensor([0, 1, 5, 3]), 10).float()
    colour = torch.nn.functional.one_hot(torch.tensor([0, 7, 2, 3]), 10).float()
    scores = class_scores(Judgement(torch.zeros(4, 2), shape, colour), labels, prefix="x_")
    assert scores == {"x_class_accuracy": 0.5, "x_shape_accuracy": 0.75, "x_colour_accuracy": 0.75}


def test_classifier_frechet_has_a_floor_from_two_real_halves():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(400, 8, generator=gen)
    same = classifier_frechet(real[:200], real)
    assert same["classifier_fd"] == pytest.approx(0.0, abs=1e-9) and same["classifier_fd_floor"] > 0
    shifted = classifier_frechet(torch.randn(200, 8, generator=gen) + 1.0, real)
    assert shifted["classifier_fd"] > 5 * shifted["classifier_fd_floor"]
    with pytest.raises(ValueError, match="at least 400"):
        classifier_frechet(real[:200], real[:399])


def test_the_classifier_stage_learns_colour_fast_and_writes_loadable_weights(tmp_path):
    held_out = EmbeddedDataset(size=100, resolution=32, seed=1, in_memory=True)
    stage = TrainClassifier(EmbeddedClassifier(width=8), EmbeddedDataset(size=2000, resolution=32), held_out,
                            batch_size=32, total_steps=60, log_every=20,
                            optim=replace(CLASSIFIER_OPTIM, warmup_steps=5, checkpoint_every=60))
    recorder = Recorder()
    summary = run_experiment(stage, tmp_path, recorder)
    assert summary["real_colour_accuracy"] > 0.5 and "real_class_accuracy" in recorder.scalars
    loaded = EmbeddedClassifier(width=8, weights=summary["weights"])
    loaded.load_pretrained(allow_random=False, log=logging.getLogger("test"))
    images = held_out.images(range(4))
    assert torch.equal(loaded.eval()(images).features, stage.classifier.eval()(images).features)
    with pytest.raises(WeightsNotFound, match="embedded_classifier.weights"):
        EmbeddedClassifier(weights=str(tmp_path / "none.pt")).load_pretrained(False, logging.getLogger("test"))
    with pytest.raises(ValueError, match="classes"):
        TrainClassifier(EmbeddedClassifier(num_classes=5), EmbeddedDataset(size=100), held_out)


# ---------------------------------------------------------------------------------------------
# The eval stage with a judge, with and without the Inception weights
# ---------------------------------------------------------------------------------------------
EVAL = """
run.experiment = @experiment.eval()
run.allow_random_weights = True
eval.reference = @dataset.embedded()
embedded.size = 8
embedded.resolution = 32
eval.held_out = @held_out/dataset.embedded()
held_out/embedded.seed = 1
held_out/embedded.size = 16
eval.classifier = @evaluation.embedded_classifier()
embedded_classifier.width = 8
eval.batch_size = 8
"""


def judged(tmp_path: Path, capsys, with_labels: bool = True, *extra: str) -> tuple[int, dict, str, str, set]:
    """Eval of 8 real-looking samples with a saved (untrained) classifier: (rc, metrics, stdout, stderr, Aim names)."""
    data = EmbeddedDataset(size=8, resolution=32, seed=2)
    pixels = to_uint8(data.images(range(8))).permute(0, 2, 3, 1).numpy()
    arrays = {"arr_0": pixels} | ({"arr_1": np.arange(8) % 10} if with_labels else {})
    np.savez(tmp_path / "samples.npz", **arrays)
    torch.manual_seed(0)
    torch.save(EmbeddedClassifier(width=8).state_dict(), tmp_path / "classifier.pt")
    (tmp_path / "eval.gin").write_text(EVAL)
    rc = main(["--gin", str(tmp_path / "eval.gin"), "--gin_param", f"run.run_root = '{tmp_path / 'runs'}'",
               "--gin_param", f"eval.samples = '{tmp_path / 'samples.npz'}'",
               "--gin_param", f"embedded_classifier.weights = '{tmp_path / 'classifier.pt'}'", *extra])
    written = sorted((tmp_path / "runs").glob("eval/*/metrics.json"))
    metrics = json.loads(written[-1].read_text()) if written else {}
    names = {m.name for m in Repo(str(tmp_path / "runs")).query_metrics("").iter()} if written else set()
    printed = capsys.readouterr()
    return rc, metrics, printed.out, printed.err, names


def printed_inception_metrics(out: str) -> list[str]:
    """Summary lines of the runner that name an Inception metric."""
    return re.findall(r"^\s*(?:\S+\.)?(fid|sfid|inception_score|precision|recall): ", out, re.M)


def test_without_inception_weights_no_inception_metric_exists_anywhere(tmp_path, capsys, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with caplog.at_level(logging.WARNING, logger="rae"):
        rc, metrics, out, _, names = judged(tmp_path, capsys)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE
    assert rc == 0 and JUDGE_KEYS <= set(metrics) and not INCEPTION_KEYS & set(metrics)
    assert metrics["inception_weights_missing"] == str(expected)
    assert not INCEPTION_KEYS & names and JUDGE_KEYS <= names
    assert printed_inception_metrics(out) == [] and f"inception_weights_missing: {expected}" in out
    assert f"no FID Inception weights at {expected}" in caplog.text and WEIGHTS_FILE in caplog.text
    assert metrics["classifier_fd_floor"] > 0 and 0 <= metrics["class_accuracy"] <= 1


@pytest.mark.slow
def test_with_inception_weights_in_the_expected_place_the_inception_metrics_come_back(tmp_path, capsys,
                                                                                       monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE
    expected.parent.mkdir(parents=True)
    inception_weights(tmp_path).rename(expected)
    rc, metrics, out, _, names = judged(tmp_path, capsys)
    assert rc == 0 and INCEPTION_KEYS | JUDGE_KEYS <= set(metrics) and "inception_weights_missing" not in metrics
    assert INCEPTION_KEYS <= names and sorted(printed_inception_metrics(out)) == sorted(INCEPTION_KEYS)


def test_the_judge_needs_its_weights_and_the_samples_their_labels(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    rc, _, _, err, _ = judged(tmp_path, capsys, True, "--gin_param",
                              f"embedded_classifier.weights = '{tmp_path / 'nowhere.pt'}'")
    assert rc == 2 and "embedded_classifier.weights" in err
    (tmp_path / "unlabelled").mkdir()
    rc, _, _, err, _ = judged(tmp_path / "unlabelled", capsys, with_labels=False)
    assert rc == 1 and "has no labels (arr_1)" in err
