"""Bradley–Terry reward-model training on preference pairs.

The model is a Hugging Face sequence classifier with one label (`AutoModelForSequenceClassification`,
`num_labels=1`, e.g. `Qwen3ForSequenceClassification`): its forward returns one score per sequence, read
by transformers at the last token that is not `config.pad_token_id`. The objective feeds it exactly
that way, so a model saved with `save_pretrained` scores a conversation in the `reward_model` verifier
(`flowlm.verify.reward_model`) as it did in training. Batches come from `flowlm.data.pairs.PairDataset`,
which must pad with the model's `pad_token_id` (its default is the tokenizer's pad id, as in the model).

The loss math is `flowlm.train.post_losses.bradley_terry_loss` (TRL `RewardTrainer`); the unit is a pair.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
from pydantic import Field
from torch import nn

from flowlm.data.pairs import pair_rows
from flowlm.errors import ConfigError
from flowlm.train.objectives.base import LossOutput, Max, Mean, Objective, ObjectiveConfig, register_objective
from flowlm.train.post_losses import bradley_terry_loss


class RewardModelConfig(ObjectiveConfig):
    """Bradley–Terry loss; `center_coef` adds `center_coef · (r_c + r_r)²` per pair (TRL
    `center_rewards_coefficient`; 0.01 in its docs) to keep rewards centred on zero."""

    name: Literal["reward_model"] = "reward_model"
    center_coef: float = Field(0.0, ge=0, description="reward-centring coefficient (0 = off)")


def pad_token_id(model: nn.Module) -> int:
    """The classifier's padding id (transformers pools the score at the last token that is not it)."""
    cfg = getattr(model, "config", None)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    pad = getattr(text, "pad_token_id", None)
    if pad is None or getattr(text, "num_labels", 1) != 1:
        raise ConfigError("reward_model: the model must be a sequence classifier with num_labels=1 and a "
                          "pad_token_id in its config (transformers reads the score at the last non-pad token)")
    return int(pad)


def pair_rewards(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar rewards `(chosen [P], rejected [P])` of a pair batch, one forward over both sides."""
    pad = pad_token_id(model)
    ids, _ = pair_rows(batch, pad_id=pad)
    scores = model(input_ids=ids, attention_mask=(ids != pad).long(), use_cache=False).logits[:, 0].float()
    P = batch["chosen_input_ids"].shape[0]
    return scores[:P], scores[P:]


@register_objective
class RewardModelObjective(Objective):
    """Bradley–Terry over pairs. Metrics: `accuracy` (Mean over pairs of r_c > r_r), `margin`,
    `chosen_reward`, `rejected_reward` (Means over pairs), `max_abs_reward` (Max)."""

    name = "reward_model"
    Config = RewardModelConfig
    unit = "pairs"
    data_kind = "pairs"
    default_epochs = 1  # one pass over the pairs (TRL RewardTrainer default)
    cfg: RewardModelConfig

    def setup(self, model: nn.Module, world: Any) -> None:
        pad_token_id(model)  # fail at set-up, not at the first step

    def count_units(self, batch: Mapping[str, Any]) -> int:
        return int(batch["chosen_input_ids"].shape[0])

    def count_tokens(self, batch: Mapping[str, Any]) -> int:
        return int(batch["chosen_input_ids"].numel() + batch["rejected_input_ids"].numel())

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> LossOutput:
        chosen, rejected = pair_rewards(model, batch)
        P = self.count_units(batch)
        losses = bradley_terry_loss(chosen, rejected, self.cfg.center_coef)
        c, r = chosen.detach(), rejected.detach()
        return LossOutput(losses.sum(), {
            "accuracy": Mean((c > r).float().sum(), P),
            "margin": Mean((c - r).sum(), P),
            "chosen_reward": Mean(c.sum(), P),
            "rejected_reward": Mean(r.sum(), P),
            "max_abs_reward": Max(torch.cat([c, r]).abs().max()),
        })
