"""Typed configuration of the training engine (optimizer, schedule, loop), shared by every objective.

What a step computes is not here: each objective has its own config (`flowlm.train.objectives`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from flowlm.config import Strict


class OptimConfig(Strict):
    """AdamW. Weight decay is not applied to embeddings or norm weights (OLMo-core convention)."""

    lr: float = Field(3e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)


class ScheduleConfig(Strict):
    """Linear warmup, then cosine / linear / constant decay to `final_lr_ratio · lr` at the last step.

    OLMo 3 uses cosine with warmup for pretraining and linear-to-zero (`final_lr_ratio: 0`) for midtraining
    and long-context extension.
    """

    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    final_lr_ratio: float = Field(0.1, ge=0, le=1)


class EngineConfig(Strict):
    """The loop: steps, batch geometry, precision, clipping, cadence of logs/evals/checkpoints."""

    steps: int = Field(gt=0)
    seq_len: int = Field(gt=1)
    batch_size: int = Field(gt=0, description="sequences per optimizer step, summed over all ranks")
    grad_accum: int = Field(1, gt=0, description="micro-batches per step on each rank")
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    clip: float = Field(1.0, ge=0, description="max global grad norm; 0 disables clipping")
    max_nonfinite_steps: int = Field(3, gt=0, description="steps with a non-finite loss or grad norm are skipped; "
                                                          "this many in a row stop the run")
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    keep_freed_memory: bool = Field(True, description="CPU only: keep freed activations in the malloc heap "
                                    "(whole process; see flowlm.train.cpu_malloc)")
    checkpoint_every: int = Field(50, gt=0)
    keep_last: int = Field(2, gt=0)
    eval_every: int = Field(0, ge=0, description="0 = evaluate only at the start and the end")
    log_every: int = Field(1, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "EngineConfig":
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum}")
        return self
