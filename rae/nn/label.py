"""Class-label embedding with label dropout for classifier-free guidance."""
from __future__ import annotations

import torch
from torch import nn


class LabelEmbedder(nn.Module):
    """labels (B,) -> (B, hidden). In training, each label becomes the null label with prob ``dropout_prob``.

    The null label is ``num_classes``: the table has one extra row for it whenever
    ``dropout_prob > 0`` (as DiT and the released RAE/REPA models; without dropout it is never trained).
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        if not 0.0 <= dropout_prob <= 1.0:
            raise ValueError(f"label dropout_prob must be in [0, 1], got {dropout_prob}")
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def init_weights(self) -> None:
        nn.init.normal_(self.embedding_table.weight, std=0.02)

    def drop(self, labels: torch.Tensor) -> torch.Tensor:
        """Replace each label by the null label with probability ``dropout_prob``."""
        dropped = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
        return torch.where(dropped, torch.full_like(labels, self.null_label), labels)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            labels = self.drop(labels)
        return self.embedding_table(labels)
