"""Supervised fine-tuning: the `lm` objective's cross-entropy on packed chat batches, plus SFT metrics.

The assistant-only labels come from the data (the token store's label mask, `flowlm.data.pack`), so the
loss is exactly `lm`'s: summed over labelled tokens, divided by the labelled tokens of the whole step
(TRL `SFTTrainer` with `assistant_only_loss` and `average_tokens_across_devices`; checked in
`tests/train/test_post_losses.py`). It exists as its own name for recipes and for the metrics below.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
from torch import nn

from flowlm.train.losses import IGNORE
from flowlm.train.objectives.base import LossOutput, Mean, Sum, register_objective
from flowlm.train.objectives.lm import LMConfig, LMObjective


class SFTConfig(LMConfig):
    """Cross-entropy on the assistant tokens; `z_loss` as in `lm` (OLMo 3 SFT: 0)."""

    name: Literal["sft"] = "sft"  # type: ignore[assignment]


def labelled_sequences(labels: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
    """Number of sequences (documents of a packed row; whole rows without `doc_ids`) with ≥ 1 label."""
    valid = labels != IGNORE
    if doc_ids is None:
        return valid.any(dim=1).sum()
    # per row, a flag per document id (ids are < T + 1: one per piece, then one for the padding); no host sync
    flags = torch.zeros(labels.shape[0], labels.shape[1] + 1, dtype=torch.int64, device=labels.device)
    return flags.scatter_reduce(1, doc_ids, valid.long(), "amax").sum()


@register_objective
class SFTObjective(LMObjective):
    """`lm` on chat batches. Metrics: `z_loss` (Mean over tokens), `sequences` (Sum: documents with an
    assistant token), `assistant_tokens_per_seq` (Mean over those documents)."""

    name = "sft"
    Config = SFTConfig
    unit = "tokens"
    default_epochs = 2  # OLMo 3 SFT: 2 epochs
    cfg: SFTConfig

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> LossOutput:
        out = super().loss(model, batch)
        labels = batch["labels"]
        n_seq = labelled_sequences(labels, batch.get("doc_ids"))
        n_tok = (labels != IGNORE).sum()
        out.metrics.update({"sequences": Sum(n_seq), "assistant_tokens_per_seq": Mean(n_tok, n_seq)})
        return out
