"""The plugin examples of every slot (examples/plugins/): each runs through the runner as its header says,
does what its docstring says, and the README's command for it is the one run here."""
from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from rae.runner import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "plugins"
SLOTS = ("backbone", "sampler", "guidance", "dataset", "decoder", "experiment")


def command(slot: str) -> list[str]:
    """The runner arguments of the example's command, as its header and the README give it."""
    line = f"python tools/run.py --import examples/plugins/my_{slot}.py --gin examples/plugins/my_{slot}.gin"
    for source in (EXAMPLES / f"my_{slot}.py", EXAMPLES / f"my_{slot}.gin", ROOT / "README.md"):
        assert line in source.read_text(), f"{source.name} does not give the command {line!r}"
    return shlex.split(line)[2:]


def run_example(slot: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the example from the repository root into ``tmp_path``; its run folder."""
    monkeypatch.chdir(ROOT)
    assert main(command(slot) + ["--gin_param", f"run.run_root = '{tmp_path}'"]) == 0
    (folder,) = (tmp_path / f"my_{slot}").iterdir()
    return folder


@pytest.mark.slow  # a few stage-2 steps with a DINOv2-S encoding every batch
def test_backbone_example_trains_in_stage2(tmp_path, monkeypatch):
    folder = run_example("backbone", tmp_path, monkeypatch)
    ema = torch.load(folder / "ema.pt", weights_only=True)
    assert ema["x_embedder.weight"].shape == (64, 384) and "final_layer.weight" in ema

    import my_backbone  # the runner imported the file under its stem

    model = my_backbone.TokenMLP()
    model.load_state_dict(ema)
    x, t, y = torch.randn(2, 384, 4, 4), torch.tensor([0.3, 0.9]), torch.tensor([1, 2])
    out, tokens = model.eval()(x, t, y, return_tokens_at=1)
    assert out.shape == x.shape and tokens.shape == (2, 16, model.token_width(1))
    torch.testing.assert_close(model(x, t, y), out)


def test_sampler_example_samples_and_is_second_order(tmp_path, monkeypatch):
    folder = run_example("sampler", tmp_path, monkeypatch)
    with np.load(folder / "samples.npz") as npz:
        assert npz["arr_0"].shape == (10, 32, 32, 3) and npz["arr_0"].dtype == np.uint8

    import my_sampler

    # dx/dt = x from t = 1 to t = 0: x(0) = x(1) / e. Halving the step quarters the midpoint rule's error.
    noise = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    errors = [abs(my_sampler.MidpointSampler(num_steps=n).sample(lambda x, t, y: x, noise).item() - math.exp(-1))
              for n in (5, 9, 17)]
    assert errors[0] < 1e-2 and 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5


def test_guidance_example_samples_and_ramps_its_scale(tmp_path, monkeypatch):
    folder = run_example("guidance", tmp_path, monkeypatch)
    with np.load(folder / "samples.npz") as npz:
        assert npz["arr_0"].shape == (10, 32, 32, 3)

    import my_guidance

    def model(x, t, y):  # conditional prediction 1, unconditional (null label 10) 0
        return (y != 10).to(x.dtype).view(-1, 1, 1, 1).expand_as(x)

    velocity = my_guidance.RampCFG(scale=3.0).velocity_fn(model, num_classes=10)
    out = velocity(torch.zeros(3, 2, 1, 1), torch.tensor([1.0, 0.5, 0.0]), torch.tensor([4, 4, 4]))
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([1.0, 2.0, 3.0]))


def test_dataset_example_feeds_latent_stats(tmp_path, monkeypatch):
    folder = run_example("dataset", tmp_path, monkeypatch)
    stats = torch.load(folder / "stat.pt", weights_only=True)
    assert stats["mean"].shape == (384, 8, 8) and torch.isfinite(stats["var"]).all()

    import my_dataset

    data = my_dataset.Gratings(size=48, resolution=64, num_classes=8)
    image, label = data[11]
    assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1 and label == 3
    torch.testing.assert_close(data[11][0], image)  # a pure function of the index
    # an orientation of the class: constant along the stripes (class 0: vertical stripes)
    vertical = data[0][0]
    torch.testing.assert_close(vertical, vertical[:, :1, :].expand_as(vertical))


@pytest.mark.slow  # a few stage-1 steps
def test_decoder_example_trains_in_stage1(tmp_path, monkeypatch):
    folder = run_example("decoder", tmp_path, monkeypatch)
    ema = torch.load(folder / "decoder_ema.pt", weights_only=True)
    assert ema["proj.weight"].shape == (3 * 8 * 8, 384, 1, 1)

    import my_decoder

    decoder = my_decoder.LinearPatches(in_channels=384, token_grid=(4, 4))
    decoder.load_state_dict(ema)
    assert decoder(torch.randn(2, 384, 4, 4)).shape == (2, 3, 32, 32) and decoder.image_size == (32, 32)
    with pytest.raises(ValueError, match=r"expects latents of shape \(B, 384, 4, 4\)"):
        decoder(torch.randn(2, 384, 5, 5))


def test_experiment_example_runs_and_scores_as_defined(tmp_path, monkeypatch):
    folder = run_example("experiment", tmp_path, monkeypatch)
    record = json.loads((folder / "separation.json").read_text())
    assert record["images"] == 20 and record["classes"] == 10 and record["separation"] > 0

    import my_experiment

    from rae.accelerator import Accelerator
    from rae.experiments.base import RunContext
    from rae.tracking.tracker import Tracker

    class Identity(torch.nn.Module):  # latents = the images themselves
        latent_shape = (3, 1, 1)

        def encode(self, images):
            return images

    class Pixels:  # four one-pixel images: values 0, 2 (class 0) and 11, 13 (class 1)
        num_classes, resolution = 2, 1

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.full((3, 1, 1), (0.0, 2.0, 11.0, 13.0)[i]), i // 2

    experiment = my_experiment.ClassSeparation(Identity(), Pixels(), num_images=4, batch_size=3)
    summary = experiment.run(RunContext(Accelerator(torch.device("cpu")), Tracker(), tmp_path))
    # within: every image is 1 from its class mean in each of 3 channels -> 3; between: class means 1
    # and 12 around their centre 6.5 -> 3 * 5.5**2
    assert summary["separation"] == pytest.approx(5.5**2)


def test_readme_documents_every_slot():
    """The README's plugin section names each slot's base class and example."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Register your own plugin"):]
    section = section[:section.index("\n## ", 1)]
    for slot, base in [("encoder", "rae.encoders.base.Encoder"), ("backbone", "rae.backbones.base.Backbone"),
                       ("sampler", "rae.sampling.base.Sampler"), ("guidance", "rae.sampling.guidance.Guidance"),
                       ("dataset", "rae.data.base.LabelledImages"), ("decoder", "rae.decoders.base.Decoder"),
                       ("experiment", "rae.experiments.base.Experiment")]:
        assert re.search(rf"\|\s*{slot}\s*\|.*`{re.escape(base)}`", section), f"README: no row for the {slot} slot"
        if slot != "encoder":
            assert f"examples/plugins/my_{slot}.py" in section
