"""Logit distillation: match a frozen teacher's next-token distributions on given sequences.

Batches are packed LM / chat batches (`input_ids`, `labels`, `doc_ids`, `position_ids`); the loss is taken
at every position with a target (`labels != -100`: the assistant tokens of chat data), one divergence
per position between the student's and the teacher's distributions over the next token
(`flowlm.train.post_losses.generalized_jsd`: forward KL, reverse KL or TRL's generalized JSD, optionally
against the teacher's top-k). The sequences are consumed as given: off-policy distillation on teacher
or data completions (Qwen3's strong-to-weak off-policy phase); on-policy sampling through the rollout
engine feeds the same objective later.

`setup` loads the teacher once (`flowlm.model.adapter.load_causal_lm`, frozen, eval mode, on the
trainer's device; under torchrun every rank holds a full copy). Both models' final hidden states are
projected through their LM heads in row chunks with activation checkpointing, so no `[tokens, V]`
logits of either model exist beyond one chunk.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
from pydantic import Field, model_validator
from torch import nn

from flowlm.errors import ConfigError
from flowlm.rl.stats import rollout_metrics
from flowlm.train.losses import IGNORE
from flowlm.train.objectives.base import LossOutput, Mean, Objective, ObjectiveConfig, register_objective
from flowlm.train.post_losses import chunked_rows, default_chunk_rows, generalized_jsd, head_weight, through_head

BETA = {"forward_kl": 0.0, "reverse_kl": 1.0}


class DistillConfig(ObjectiveConfig):
    """What to match: `divergence` forward_kl (KL(teacher‖student), mode-covering), reverse_kl
    (KL(student‖teacher), mode-seeking; what on-policy distillation uses) or jsd (TRL's generalized JSD
    with `beta`; 0.5 is symmetric). `temperature` divides both models' logits (no T² factor, as TRL)."""

    name: Literal["distill"] = "distill"
    teacher: str = Field(description="teacher checkpoint directory (same vocabulary as the student)")
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = Field(0.5, gt=0, lt=1, description="jsd only: weight of the teacher in the mixture (TRL GKD beta)")
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, gt=0, description="compare over the teacher's top-k tokens (see generalized_jsd)")

    @model_validator(mode="after")
    def _check(self) -> "DistillConfig":
        if self.divergence != "jsd" and "beta" in self.model_fields_set:
            raise ValueError(f"beta applies to divergence: jsd only (got divergence: {self.divergence})")
        return self

    @property
    def jsd_beta(self) -> float:
        """β of `generalized_jsd` for this divergence (0 forward KL, 1 reverse KL)."""
        return BETA.get(self.divergence, self.beta)


@register_objective
class DistillObjective(Objective):
    """Per-token divergence to a frozen teacher. Metrics: `teacher_agreement` (Mean over tokens: the
    student's and teacher's most likely next token agree)."""

    name = "distill"
    Config = DistillConfig
    unit = "tokens"
    default_epochs = 2  # as SFT (off-policy distillation is SFT on teacher outputs)
    cfg: DistillConfig

    def __init__(self, cfg: DistillConfig | None = None, **fields: Any) -> None:
        super().__init__(cfg, **fields)
        self.teacher: nn.Module | None = None
        # rows of logits per chunk (memory, not maths: any value gives the same loss); None = by budget
        self.chunk_rows: int | None = None

    def setup(self, model: nn.Module, world: Any) -> None:
        from flowlm.model.adapter import load_causal_lm

        teacher = load_causal_lm(self.cfg.teacher, device=world.device)
        teacher.eval().requires_grad_(False)
        self.set_teacher(teacher, student=model)

    def set_teacher(self, teacher: nn.Module, student: nn.Module | None = None) -> None:
        """Use an already loaded, frozen teacher (tests; a stage that shares one across objectives)."""
        t_head, s_head = head_weight(teacher), head_weight(student) if student is not None else None
        if t_head is not None and s_head is not None and t_head.shape[0] != s_head.shape[0]:
            raise ConfigError(f"distill: teacher vocabulary {t_head.shape[0]} != student vocabulary {s_head.shape[0]}")
        self.teacher = teacher

    def count_units(self, batch: Mapping[str, Any]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> LossOutput:
        if self.teacher is None:
            raise ConfigError("distill: no teacher (setup was not called)")
        kw = {"position_ids": batch.get("position_ids"), "doc_ids": batch.get("doc_ids")}
        valid = (batch["labels"] != IGNORE).reshape(-1)
        t_w = head_weight(self.teacher)
        with torch.no_grad():
            t_x = self.teacher(batch["input_ids"], return_hidden=t_w is not None, **kw)
        t_rows = t_x.reshape(-1, t_x.shape[-1])[valid]

        def project(s_x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
            s_rows = s_x.reshape(-1, s_x.shape[-1])[valid]
            vocab = w.shape[0] if w is not None else s_x.shape[-1]
            chunk = self.chunk_rows or max(1, default_chunk_rows(vocab, s_x.device) // 2)  # two [c, V] blocks
            return chunked_rows(self._chunk, (s_rows, t_rows), (w, t_w), chunk)

        per_token, agree = through_head(model, batch["input_ids"], project, **kw).unbind(1)
        # an on-policy batch's statistics (generated tokens, tool calls: `flowlm.train.onpolicy`)
        return LossOutput(per_token.sum(), {"teacher_agreement": Mean(agree.sum(), valid.sum()),
                                            **rollout_metrics(batch)})

    def _chunk(self, s: torch.Tensor, t: torch.Tensor, s_w: torch.Tensor | None,
               t_w: torch.Tensor | None) -> torch.Tensor:
        """`[c, 2]`: the divergence of each row and whether both argmaxes agree (no gradient)."""
        s_logits = (s @ s_w.t()).float() if s_w is not None else s.float()
        t_logits = (t @ t_w.t()).float() if t_w is not None else t.float()
        div = generalized_jsd(s_logits, t_logits, self.cfg.jsd_beta, self.cfg.temperature, top_k=self.cfg.top_k)
        agree = (s_logits.argmax(-1) == t_logits.argmax(-1)).to(div.dtype)
        return torch.stack([div, agree], dim=1)
