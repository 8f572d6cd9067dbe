"""The largest training batch that fits on one device: doubling until a step runs out of memory, then bisection."""
from __future__ import annotations

import gc
from typing import Callable

import torch

from rae.accelerator import Accelerator
from rae.backbones.base import Backbone
from rae.bench.models import materialize
from rae.train.optim import make_adamw
from rae.train.step import optimizer_step
from rae.transport.transport import Transport


def largest_batch(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """The largest n <= ``limit`` with ``fits(n)``, assuming fitting is monotone; 0 if ``start`` does not fit.

    Doubles from ``start`` until a batch fails (or ``limit`` is reached), then bisects between
    the last batch that fitted and the first that did not.
    """
    if not 1 <= start <= limit:
        raise ValueError(f"need 1 <= start <= limit, got start={start}, limit={limit}")
    if not fits(start):
        return 0
    good, bad = start, None
    while bad is None and good < limit:
        trial = min(2 * good, limit)
        if fits(trial):
            good = trial
        else:
            bad = trial
    while bad is not None and bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def train_batch_fits(backbone: Backbone, transport: Transport, acc: Accelerator,
                     lr: float = 1e-4) -> tuple[Callable[[int], bool], Callable[[], None]]:
    """``fits(n)``: whether one training step (forward, loss, backward, clip, AdamW) at batch n fits in memory.

    The model and its AdamW state stay on the device between trials (they are part of every
    step's memory); a trial that runs out of memory frees its activations and answers False.
    Returns ``fits`` and a ``release`` that frees the model.
    """
    device = acc.device
    model = materialize(backbone, device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_adamw(params, lr)

    def trial(n: int) -> None:
        x0 = torch.randn(n, *model.latent_shape, device=device)
        y = torch.randint(0, model.num_classes, (n,), device=device)
        with acc.autocast():
            point = transport.draw(x0)
            loss = transport.loss(model(point.x_t, point.t, y), point).mean()
        loss.backward()
        optimizer_step(optimizer, params, 1.0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def fits(n: int) -> bool:
        try:
            trial(n)  # its tensors die with its frame
            ok = True
        except torch.OutOfMemoryError:
            ok = False
        optimizer.zero_grad(set_to_none=True)
        _free(device)
        return ok

    def release() -> None:
        model.to("meta")
        optimizer.state.clear()
        _free(device)

    return fits, release
