"""One options object for the trainers' optimisers (`OptimOptions`): every shipped config hands its
trainers the values it gave them before the options moved into it, and bad values are refused
naming the binding."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import gin
from rae.experiments.stage1 import Stage1
from rae.experiments.stage2 import Stage2
from rae.run_file import set_run_root
from rae.runner import build_spec, import_plugins, parse_gin
from rae.train.options import OptimOptions

ROOT = Path(__file__).resolve().parent.parent
# Made once, before `OptimOptions` existed, from the trainers these same files built then (their
# lr, betas, ..., read from the trainer objects; stage 1's discriminator used the decoder's options).
BEFORE = json.loads((ROOT / "tests" / "fixtures" / "trainer_options_before.json").read_text())
SESSION_FIELDS = ("ema_decay", "checkpoint_every", "checkpoint_every_epochs")


def optimiser_values(options: OptimOptions) -> dict:
    """An options object's optimiser and schedule fields, as the fixture holds them."""
    values = {f.name: getattr(options, f.name) for f in fields(options) if f.name not in SESSION_FIELDS}
    return values | {"betas": list(options.betas)}


def trainer_values(trainer: Stage1 | Stage2) -> dict:
    """What a built trainer will train with: its optimisers' options, EMA, cadence, length and batch."""
    found = {"optim": optimiser_values(trainer.optim), "total_steps": trainer.total[0], "total_epochs": trainer.total[1],
             "keep_checkpoints": trainer.keep_checkpoints, "log_every": trainer.log_every,
             "batch_size": trainer.batch_size} | {name: getattr(trainer.optim, name) for name in SESSION_FIELDS}
    if isinstance(trainer, Stage1) and trainer.discriminator is not None:
        found["disc_optim"] = optimiser_values(trainer.disc_optim)
    return found


def built_trainers(config: str, tmp_path: Path) -> dict[str, dict]:
    """The trainers a config builds on the meta device (a pipeline's by stage name), as values."""
    gin.clear_config()
    plugin = (ROOT / config).with_suffix(".py")
    import_plugins([str(plugin)] if config.startswith("examples/") else [])
    parse_gin([str(ROOT / config)], [], fill_required=True)
    set_run_root(tmp_path)
    try:
        with torch.device("meta"):
            experiment = build_spec(config).experiment
    finally:
        set_run_root(None)
    stages = getattr(experiment, "stages", {experiment.kind: experiment})
    return {name: trainer_values(stage) for name, stage in stages.items() if isinstance(stage, (Stage1, Stage2))}


@pytest.mark.parametrize("config", sorted(BEFORE))
def test_configs_give_their_trainers_the_values_they_gave_before(config, tmp_path):
    assert built_trainers(config, tmp_path) == BEFORE[config]


@pytest.mark.parametrize("field, value, expected", [
    ("lr", -1.0, "stage2.optim.lr = -1.0: expected a positive number"),
    ("eps", 0.0, "stage2.optim.eps = 0.0: expected a positive number"),
    ("grad_clip", 0.0, "stage2.optim.grad_clip = 0.0: expected a positive number"),
    ("checkpoint_every", 0, "stage2.optim.checkpoint_every = 0: expected a positive number"),
    ("warmup_steps", -1, "stage2.optim.warmup_steps = -1: expected a number >= 0"),
    ("final_lr", -1e-5, "stage2.optim.final_lr = -1e-05: expected a number >= 0"),
    ("weight_decay", -0.1, "stage2.optim.weight_decay = -0.1: expected a number >= 0"),
    ("ema_decay", 1.5, "stage2.optim.ema_decay = 1.5: expected a decay in [0, 1]"),
    ("betas", (0.9, 1.0), "stage2.optim.betas = (0.9, 1.0): expected two AdamW betas in [0, 1)"),
    ("lr_schedule", "step", "stage2.optim.lr_schedule = 'step': expected one of ('constant', 'linear', 'cosine')"),
    ("warmup_mode", "cosine", "stage2.optim.warmup_mode = 'cosine': expected one of ('linear', 'constant')"),
])
def test_a_bad_value_is_refused_naming_its_binding(field, value, expected):
    with pytest.raises(ValueError) as error:
        OptimOptions(**{field: value}).check("stage2.optim")
    assert str(error.value).startswith(expected)


def test_a_duration_in_steps_and_in_epochs_is_refused():
    with pytest.raises(ValueError, match="stage1.disc_optim: give warmup in steps or in epochs, not both"):
        OptimOptions(warmup_steps=2, warmup_epochs=1.0).check("stage1.disc_optim")


def test_durations_in_epochs_become_steps():
    options = OptimOptions(lr=1.0, lr_schedule="linear", warmup_epochs=1.0, decay_end_epoch=3.0, final_lr=0.0,
                           checkpoint_every_epochs=0.5)
    optimizer = options.optimizer([torch.nn.Parameter(torch.zeros(1))])
    scheduler = options.scheduler(optimizer, steps_per_epoch=4, total_steps=100)
    lrs = []
    for _ in range(13):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0])
    assert options.checkpoint_steps(steps_per_epoch=4) == 2 and OptimOptions().checkpoint_steps(4) == 5000
