"""The `trace` stage: the judge after each link of the loop (reconstruction, latent noise, stage 2 from time t)."""
from __future__ import annotations

import functools

import pytest
import torch

from rae.autoencoder.rae import RAE
from rae.backbones.ditdh import DiTDH
from rae.data.embedded import EmbeddedDataset
from rae.decoders.vit import ViTDecoder
from rae.encoders.tiny_vit import TinyViT
from rae.experiments.sample import Sample
from rae.experiments.trace import Trace
from rae.metrics.classifier import EmbeddedClassifier
from rae.sampling.cfg import ClassifierFreeGuidance
from rae.sampling.fixed_step import EulerSampler
from rae.transport.shift import shift_time, unshift_time
from rae.transport.transport import Transport


def test_unshift_time_inverts_the_shift():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    for shift in (0.5, 0.71, 1.0, 6.9):
        assert torch.allclose(shift_time(unshift_time(t, shift), shift), t)
        assert torch.allclose(unshift_time(shift_time(t, shift), shift), t)
    with pytest.raises(ValueError, match="positive"):
        unshift_time(t, 0.0)


class RecordingEuler(EulerSampler):
    """Euler that remembers the grids it was given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.grids: list[torch.Tensor] = []

    def solve(self, problem, x, grid):
        self.grids.append(grid)
        return super().solve(problem, x, grid)


def make_trace(**options) -> Trace:
    options = {"num_images": 40, "batch_size": 16} | options
    torch.manual_seed(0)
    encoder = TinyViT(input_size=32, patch_size=4, hidden_size=16, depth=1, num_heads=4)
    autoencoder = RAE(encoder, functools.partial(ViTDecoder, size="tiny", patch_size=4), noise_tau=0.0)
    backbone = DiTDH(hidden_size=32, depth=1, num_heads=4, head_hidden_size=32, head_depth=1, head_num_heads=4,
                     in_channels=16, input_size=8, patch_size=2, num_classes=10)
    sample = Sample(backbone, autoencoder, Transport(), RecordingEuler(num_steps=5, shift="auto"),
                    ClassifierFreeGuidance(scale=2.0))
    return Trace(sample, EmbeddedClassifier(num_classes=10, width=4), EmbeddedDataset(size=40, seed=1),
                 **options)


def test_each_link_is_scored_and_the_finishing_grid_starts_at_the_asked_time():
    trace = make_trace(latent_noise=(0.0, 0.5), starts=(1e-4, 0.5, 1.0))
    links = dict(trace.links(torch.device("cpu"), seed=0))
    assert list(links) == ["real", "reconstruction", "latent_noise_0", "latent_noise_0.5",
                           "from_t_0.0001", "from_t_0.5", "from_t_1"]
    assert [len(batch) for batch in links["from_t_1"]] == [16, 16, 8]
    image = {name: torch.cat(batches) for name, batches in links.items()}
    # no latent noise decodes to the reconstruction; a start near t = 0 leaves the latents almost as they
    # are; a start at t = 1 is plain sampling, far from the image
    assert torch.equal(image["latent_noise_0"], image["reconstruction"])
    assert (image["from_t_0.0001"] - image["reconstruction"]).abs().max() < 1e-2
    assert (image["from_t_1"] - image["reconstruction"]).abs().mean() > 10 * (
        image["from_t_0.0001"] - image["reconstruction"]).abs().mean()
    grids = trace.sample.sampler.grids
    assert [round(float(grids[i][0]), 6) for i in (0, 3, 6)] == [1e-4, 0.5, 1.0]
    assert all(float(grid[-1]) == 0.0 for grid in grids)
    found = trace.accuracies(torch.device("cpu"), seed=0)
    assert list(found) == list(links) and all(0.0 <= value <= 1.0 for value in found.values())


def test_bad_trace_options_name_the_binding():
    with pytest.raises(ValueError, match="trace.starts"):
        make_trace(starts=(0.0,))
    with pytest.raises(ValueError, match="trace.latent_noise"):
        make_trace(latent_noise=(-0.1,))
    with pytest.raises(ValueError, match="held_out has 40 images"):
        make_trace(num_images=41)
    captioned = make_trace().sample
    captioned.captions = object()  # what a text-to-image sample stage holds
    with pytest.raises(ValueError, match="sample.captions"):
        Trace(captioned, EmbeddedClassifier(), EmbeddedDataset(size=4))
