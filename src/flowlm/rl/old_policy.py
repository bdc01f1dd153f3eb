"""The old-policy pass of RL minibatches: log-probs of the trained tokens under the policy as it is now.

With `rollout.minibatches` or `num_epochs` > 1 the rollout source computes these once per rollout batch,
before the first step's update, so every step's ratio is taken against the same old policy (open-instruct's
`old_logprobs`). It is a learner-side forward, kept out of the rollout source itself.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from flowlm.train.batch import to_device


def old_policy_logps(policy: nn.Module, batch: dict[str, Any], *, fp32_lm_head: bool = False,
                     bf16: bool = False, shared_prefix: bool = True) -> torch.Tensor:
    """`[B, T]` fp32 log-prob of every trained token (`grpo.token_mask`) under `policy` as it is now, NaN
    elsewhere; no gradient, on the policy's device, returned on the batch's (CPU). `fp32_lm_head`, `bf16`
    (autocast, as the trainer runs a single-process bf16 stage) and `shared_prefix` must be the learner's,
    so that the ratio of a rollout batch's first minibatch is exactly 1 (the rl stage passes them)."""
    from flowlm.train.objectives.grpo import completion_logps, token_mask

    device = next(policy.parameters()).device
    keys = ("input_ids", "labels", "loss_rows", "masked_rows", "group_ids")
    on_device = to_device({k: batch[k] for k in keys if k in batch}, device)
    mask = token_mask(on_device)
    cast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), cast:
        logps = completion_logps(policy, on_device, mask, fp32_lm_head=fp32_lm_head, shared_prefix=shared_prefix)[0]
    return torch.where(mask, logps, float("nan")).to(batch["input_ids"].device)
