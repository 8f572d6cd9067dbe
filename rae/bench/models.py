"""The models of a named config, built through the runner's gin path on the meta device, then made real.

Built on meta, nothing is allocated or loaded (required paths get placeholders, as in a dry run);
only the model a measurement needs is then materialised on the device with random weights.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from rae.backbones.base import Backbone
from rae.decoders.base import Decoder
from rae.nn.init import initialize
from rae.runner import build_spec, import_plugins, parse_gin
from rae.transport.transport import Transport


@dataclass
class BenchModels:
    """What a config offers the benchmark (on the meta device); None where it has no such part."""

    backbone: Backbone | None
    transport: Transport | None
    decoder: Decoder | None
    latent_shape: tuple[int, ...] | None
    unset: list[str]


def _first(models: Sequence[nn.Module], kind: type) -> nn.Module | None:
    """The first submodule of type ``kind`` among the experiment's models."""
    for model in models:
        for module in model.modules():
            if isinstance(module, kind):
                return module
    return None


def load_config(gin_files: Sequence[str], bindings: Sequence[str]) -> BenchModels:
    """Parse the config like ``tools/run.py --dry_run`` and build it on meta; raises ConfigError."""
    import_plugins([])
    unset = parse_gin(gin_files, bindings, fill_required=True)
    with torch.device("meta"):
        spec = build_spec(", ".join(gin_files))
    experiment = spec.experiment
    models = list(experiment.models().values())
    backbone = _first(models, Backbone)
    transport = getattr(experiment, "transport", None)
    shape = experiment.latent_shape() or (tuple(backbone.latent_shape) if backbone is not None else None)
    return BenchModels(backbone, transport if isinstance(transport, Transport) else None,
                       _first(models, Decoder), tuple(shape) if shape else None, unset)


def materialize(module: nn.Module, device: torch.device, seed: int = 0) -> nn.Module:
    """Allocate a meta-built module on ``device`` with random weights (speed needs no trained ones).

    Every float tensor is first filled N(0, 0.02) (tensors no init rule touches, like fixed position
    tables, would otherwise hold uninitialised memory, possibly NaN), then the layers' own init runs.
    """
    torch.manual_seed(seed)
    module = module.to_empty(device=device)
    with torch.no_grad():
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if tensor.is_floating_point():
                tensor.normal_(0.0, 0.02)
            else:
                tensor.zero_()
    initialize(module, linear_init="torch")
    if isinstance(module, Backbone):
        module.initialize_weights()
    return module
