"""Online FID during stage-2 training: due steps, both models scored, and the score of a direct computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_latent_cache import Recorder, build, run_experiment
from test_release_configs import ROOT
from test_stage2 import TINY_GIN, tiny

from rae.experiments.image_store import to_uint8
from rae.experiments.online_fid import OnlineFID
from rae.experiments.sample import sample_generator, sample_inputs
from rae.metrics.evaluate import load_reference
from rae.metrics.frechet import GaussianStats, frechet_distance
from rae.runner import main
from rae.sampling import EulerSampler, NoGuidance

NUM_SAMPLES = 4


@pytest.fixture
def reference(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "reference.npz", arr_0=images)
    return tmp_path / "reference.npz"


def bindings(reference, *extra: str) -> list[str]:
    return ["stage2.online_fid = @evaluation.online_fid()", f"online_fid.reference = '{reference}'",
            "online_fid.sampler = @sampler.euler()", "euler.num_steps = 3", "euler.shift = 1.0",
            f"online_fid.num_samples = {NUM_SAMPLES}", "online_fid.batch_size = 4", "online_fid.every = 2",
            "stage2.total_steps = 3", *extra]


def test_due_steps():
    fid = OnlineFID("ref.npz", EulerSampler(num_steps=3), every=5, at_start=False)
    assert [s for s in range(12) if fid.due(s)] == [5, 10]
    assert OnlineFID("ref.npz", EulerSampler(num_steps=3), every=5).due(0)


@pytest.mark.parametrize("binding, message", [
    ("online_fid.every = 0", "every 0"), ("online_fid.labels = 'some'", "online_fid.labels"),
    ("online_fid.models = ['live']", "online_fid.models"),
])
def test_bad_settings_are_named(reference, tiny_dinov2_registers_dir, binding, message):
    with pytest.raises(Exception, match=message):
        build(TINY_GIN, tiny(tiny_dinov2_registers_dir, *bindings(reference, binding)))


def test_training_logs_the_fid_of_both_models_at_the_start_and_every_n_steps(tmp_path, reference,
                                                                             tiny_dinov2_registers_dir):
    experiment = build(TINY_GIN, tiny(tiny_dinov2_registers_dir, *bindings(reference)))
    initial = {k: v.clone() for k, v in experiment.backbone.state_dict().items()}
    recorder = Recorder()
    run_experiment(experiment, tmp_path / "run", recorder)
    assert set(recorder.scalars["online/fid_ema"]) == {0, 2} == set(recorder.scalars["online/fid_model"])
    # at step 0 the EMA is the initial backbone: the score equals a direct computation on the same samples
    backbone = experiment.backbone
    backbone.load_state_dict(initial)
    backbone.eval()
    velocity = NoGuidance().velocity_fn(backbone, to_velocity=experiment.transport.velocity)
    noise, labels = sample_inputs(0, list(range(NUM_SAMPLES)), tuple(backbone.latent_shape), backbone.num_classes,
                                  "equal")
    inception = experiment.online_fid.inception
    pools = []
    with torch.no_grad():
        for start in range(0, NUM_SAMPLES, 4):
            batch = slice(start, start + 4)
            latents = EulerSampler(num_steps=3).sample(velocity, noise[batch], labels[batch],
                                                       generator=sample_generator(0, start))
            pools.append(inception(to_uint8(experiment.autoencoder.decode(latents).float())).pool)
        expected = frechet_distance(GaussianStats.of(torch.cat(pools)),
                                    load_reference(reference, inception, 4, "cpu").pool)
    assert recorder.scalars["online/fid_ema"][0] == pytest.approx(expected, rel=1e-4)
    assert recorder.scalars["online/fid_ema"][0] == pytest.approx(recorder.scalars["online/fid_model"][0], rel=1e-6)
    assert recorder.scalars["online/fid_ema"][2] != recorder.scalars["online/fid_model"][2]


def test_only_the_ema_when_asked(tmp_path, reference, tiny_dinov2_registers_dir):
    experiment = build(TINY_GIN, tiny(tiny_dinov2_registers_dir, *bindings(
        reference, "online_fid.models = ['ema']", "online_fid.at_start = False", "stage2.total_steps = 2")))
    recorder = Recorder()
    run_experiment(experiment, tmp_path / "run", recorder)
    assert set(recorder.scalars["online/fid_ema"]) == {2} and "online/fid_model" not in recorder.scalars


def test_stats_from_feature_sums_equal_numpy_cov():
    """The all-reduced sums give numpy's unbiased covariance, the one ADM's evaluator fits."""
    features = torch.randn(50, 7, dtype=torch.float64)
    count, total, outer = torch.tensor(50.0, dtype=torch.float64), features.sum(0), features.T @ features
    mu = total / count
    sigma = (outer - count * torch.outer(mu, mu)) / (count - 1)
    np.testing.assert_allclose(sigma.numpy(), np.cov(features.numpy(), rowvar=False), atol=1e-10)


def test_the_release_setting_binds_onto_the_paper_config(capsys):
    assert main(["--gin", str(ROOT / "experiments" / "ditdh_xl.gin"), "--gin",
                 str(ROOT / "gin" / "eval" / "online_fid_imagenet256.gin"), "--dry_run"]) == 0
    out = capsys.readouterr().out
    for line in ("online_fid.every = 25000", "online_fid.models = ['ema', 'model']", "online_fid.num_samples = 50000",
                 "online/ode.method = 'euler'", "online/ode.num_steps = 50", "online_fid.labels = 'equal'"):
        assert line in out, line
