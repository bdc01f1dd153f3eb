"""The language-modelling objective: next-token cross-entropy (+ optional z-loss) on packed batches."""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import Field
from torch import nn

from flowlm.train.losses import IGNORE, lm_loss_sum
from flowlm.train.objectives.base import LossOutput, Mean, Objective, ObjectiveConfig, register_objective


class LMConfig(ObjectiveConfig):
    """Cross-entropy on every labelled token; `z_loss` multiplies `logsumexp(logits)^2` (OLMo 3: 1e-5)."""

    name: Literal["lm"] = "lm"
    z_loss: float = Field(0.0, ge=0, description="z-loss multiplier (OLMo 3 pretraining: 1e-5)")


@register_objective
class LMObjective(Objective):
    """Cross-entropy over `labels != -100`; packed documents are kept apart with `doc_ids`."""

    name = "lm"
    Config = LMConfig
    unit = "tokens"
    cfg: LMConfig

    def count_units(self, batch: Mapping[str, Any]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> LossOutput:
        kw = {"position_ids": batch.get("position_ids"), "doc_ids": batch.get("doc_ids")}
        z_loss = self.cfg.z_loss
        if getattr(model, "supports_fused_loss", False):  # native model: chunked LM head + loss
            total, z_sum, n = model(batch["input_ids"], labels=batch["labels"], z_loss=z_loss, **kw)
        else:
            total, z_sum, n = lm_loss_sum(model(batch["input_ids"], **kw), batch["labels"], z_loss)
        return LossOutput(total, {"z_loss": Mean(z_sum.detach(), n)})
