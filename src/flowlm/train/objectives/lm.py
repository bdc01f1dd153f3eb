"""The language-modelling objective: next-token cross-entropy (+ optional z-loss) on packed batches."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from flowlm.train.losses import IGNORE, lm_loss_sum


class LMObjective:
    """Cross-entropy over `labels != -100`; packed documents are kept apart with `doc_ids`."""

    name = "lm"

    def __init__(self, z_loss: float = 0.0) -> None:
        self.z_loss = z_loss

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, dict[str, Any]]:
        kw = {"position_ids": batch.get("position_ids"), "doc_ids": batch.get("doc_ids")}
        if getattr(model, "supports_fused_loss", False):  # native model: chunked LM head + loss
            total, z_sum, n = model(batch["input_ids"], labels=batch["labels"], z_loss=self.z_loss, **kw)
        else:
            total, z_sum, n = lm_loss_sum(model(batch["input_ids"], **kw), batch["labels"], self.z_loss)
        return total, n, {"z_loss_sum": float(z_sum)}
