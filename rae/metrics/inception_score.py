"""Inception Score (Salimans et al. 2016) as ADM's evaluator computes it."""
from __future__ import annotations

import torch


def inception_score(logits: torch.Tensor, split_size: int = 5000) -> float:
    """exp E_x KL(p(y|x) || p(y)), averaged over consecutive splits of ``split_size`` samples.

    ``logits`` are Inception's unbiased logits (pool3 @ W, no bias: ADM's ``softmax/logits/MatMul``).
    ADM splits by size (5000), not into 10 parts as the original code.
    """
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise ValueError(f"need (N > 0, classes) logits, got shape {tuple(logits.shape)}")
    probs = torch.softmax(logits.to(torch.float64), dim=1)
    scores = []
    for part in probs.split(split_size):
        marginal = part.mean(0, keepdim=True)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(1).mean()
        scores.append(kl.exp())
    return float(torch.stack(scores).mean())
