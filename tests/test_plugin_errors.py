"""A plugin of the wrong kind is refused where it is received, naming the base class to subclass;
``--import`` takes a module or a file and says where it looked for one it cannot find."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from torch import nn

from rae.registry import check_slot
from rae.runner import main

WRONG_PLUGINS = textwrap.dedent('''
    """Plugins of every slot that do not subclass the slot's base class."""
    from torch import nn

    from rae.registry import BACKBONES, DATASETS, DECODERS, EXPERIMENTS, GUIDANCE, SAMPLERS


    @BACKBONES.register("plain_module_backbone")
    class PlainBackbone(nn.Module):
        def __init__(self, hidden_size: int = 8):
            super().__init__()
            self.net = nn.Linear(hidden_size, hidden_size)


    @SAMPLERS.register("plain_sampler")
    class PlainSampler:
        def sample(self, velocity, noise, y=None, **kwargs):
            return noise


    @GUIDANCE.register("plain_guidance")
    class PlainGuidance:
        def velocity_fn(self, model, **kwargs):
            return model


    @DATASETS.register("unsized_dataset")
    class Unsized:  # has no resolution
        num_classes = 10

        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise IndexError(i)


    @DECODERS.register("plain_decoder")
    class PlainDecoder(nn.Module):
        def __init__(self, in_channels: int, token_grid: tuple):
            super().__init__()


    @EXPERIMENTS.register("plain_experiment")
    class PlainExperiment:
        def run(self, ctx):
            return {}
''')
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = "examples/plugins/sample_tiny.gin"
CASES = {
    "backbone": (["experiments/stage2_tiny.gin"], ["stage2.backbone = @backbone.plain_module_backbone()"],
                 ("stage2.backbone is a wrong_plugins.PlainBackbone, not a backbone: subclass "
                  "rae.backbones.base.Backbone")),
    "sampler": ([SAMPLE], ["sample.sampler = @sampler.plain_sampler()", "sample.guidance = @guidance.none()"],
                "sample.sampler is a wrong_plugins.PlainSampler, not a sampler: subclass rae.sampling.base.Sampler"),
    "guidance": ([SAMPLE], ["sample.sampler = @sampler.euler()", "sample.guidance = @guidance.plain_guidance()"],
                 ("sample.guidance is a wrong_plugins.PlainGuidance, not a guidance: subclass "
                  "rae.sampling.guidance.Guidance")),
    "dataset": (["experiments/latent_stats_embedded.gin"], ["latent_stats.dataset = @dataset.unsized_dataset()"],
                ("latent_stats.dataset is a wrong_plugins.Unsized, not a dataset: it needs num_classes, resolution, "
                 "__len__, __getitem__ (the protocol rae.data.base.LabelledImages)")),
    "decoder": (["experiments/reconstruct_tiny.gin"], ["autoencoder.rae.decoder = @decoder.plain_decoder"],
                ("rae.decoder is the class wrong_plugins.PlainDecoder, not a decoder: subclass "
                 "rae.decoders.base.Decoder")),
    "experiment": (["experiments/latent_stats_embedded.gin"], ["run.experiment = @experiment.plain_experiment()"],
                   ("run.experiment is a wrong_plugins.PlainExperiment, not an experiment: subclass "
                    "rae.experiments.base.Experiment")),
}


@pytest.fixture(scope="module")
def wrong_plugins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wrong_plugins")
    (folder / "wrong_plugins.py").write_text(WRONG_PLUGINS)
    return folder / "wrong_plugins.py"


@pytest.mark.parametrize("slot", list(CASES))
def test_a_plugin_of_the_wrong_kind_names_the_base_class(slot, wrong_plugins, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    files, bindings, message = CASES[slot]
    args = ["--import", str(wrong_plugins), *[a for f in files for a in ("--gin", f)],
            *[a for b in bindings for a in ("--gin_param", b)], "--dry_run"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("configuration error:") and message in err, err
    assert "Traceback" not in err and "has no attribute" not in err


def test_the_check_accepts_what_fits_and_looks_inside_unions_and_containers():
    from rae.backbones.base import Backbone
    from rae.backbones.ditdh import DiTDH
    from rae.experiments.base import Experiment

    backbone = DiTDH(hidden_size=8, depth=1, num_heads=1, head_hidden_size=8, head_depth=1, head_num_heads=1,
                     input_size=2, patch_size=1, in_channels=4, num_classes=2)
    check_slot("x.backbone", backbone, Backbone)
    check_slot("x.backbone", None, Backbone | None)
    with pytest.raises(TypeError, match=r"x.backbone is a torch.nn.modules.linear.Linear, not a backbone"):
        check_slot("x.backbone", nn.Linear(2, 2), Backbone | None)
    with pytest.raises(TypeError, match=r"x.stages is a builtins.dict, not an experiment"):
        check_slot("x.stages", {"a": object()}, dict[str, Experiment])
    check_slot("x.anything", object(), int)  # not a slot: other checks' business


def test_import_takes_a_file_and_reports_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--import", "./no_such_plugins.py", "--list", "backbone"]) == 2
    err = capsys.readouterr().err
    assert f"--import ./no_such_plugins.py: no Python file {tmp_path / 'no_such_plugins.py'}" in err
    assert f"working folder {tmp_path}" in err

    assert main(["--import", "no_such_plugins", "--list", "backbone"]) == 2
    err = capsys.readouterr().err
    assert f"no module 'no_such_plugins' in the working folder {tmp_path} or on the Python path" in err
    assert "--import ./no_such_plugins.py" in err

    (tmp_path / "broken_plugins.py").write_text("import torch\n\nraise RuntimeError('no GPU here')\n")
    assert main(["--import", "broken_plugins.py", "--list", "backbone"]) == 2
    err = capsys.readouterr().err
    assert f"importing the module failed at {tmp_path / 'broken_plugins.py'}, line 3: RuntimeError: no GPU here" in err

    (tmp_path / "file_plugins.py").write_text(
        "from rae.registry import SAMPLERS\nfrom rae.sampling.fixed_step import EulerSampler\n\n"
        "SAMPLERS.register('file_euler')(type('FileEuler', (EulerSampler,), {}))\n")
    assert main(["--import", "file_plugins.py", "--list", "sampler"]) == 0
    assert "@sampler.file_euler(" in capsys.readouterr().out
