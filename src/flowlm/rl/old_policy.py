"""The old-policy pass of RL minibatches: log-probs of the trained tokens under the policy as it is now.

With `rollout.minibatches` or `num_epochs` > 1 the rollout source computes these once per rollout batch,
before the first step's update, so every step's ratio is taken against the same old policy (open-instruct's
`old_logprobs`). It is a learner-side forward, kept out of the rollout source itself; `serve_steps` turns
a rollout batch into its optimizer steps (minibatches x epochs) with them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from flowlm.rl.stats import STAT
from flowlm.train.batch import SplitRule, split_batch, to_device


def old_policy_logps(policy: nn.Module, batch: dict[str, Any], *, fp32_lm_head: bool = False,
                     bf16: bool = False, shared_prefix: bool = True) -> torch.Tensor:
    """`[B, T]` fp32 log-prob of every trained token (`grpo.token_mask`) under `policy` as it is now, NaN
    elsewhere; no gradient, on the policy's device, returned on the batch's (CPU). `fp32_lm_head`, `bf16`
    (autocast, as the trainer runs a single-process bf16 stage) and `shared_prefix` must be the learner's,
    so that the ratio of a rollout batch's first minibatch is exactly 1 (the rl stage passes them)."""
    from flowlm.train.objectives.grpo import completion_logps, token_mask

    device = next(policy.parameters()).device
    keys = ("input_ids", "labels", "loss_rows", "masked_rows", "group_ids", "temperature")
    on_device = to_device({k: batch[k] for k in keys if k in batch}, device)
    mask = token_mask(on_device)
    cast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), cast:
        logps = completion_logps(policy, on_device, mask, fp32_lm_head=fp32_lm_head, shared_prefix=shared_prefix)[0]
    return torch.where(mask, logps, float("nan")).to(batch["input_ids"].device)


def serve_steps(batch: dict[str, Any], policy: nn.Module,
                old_logps_fn: Callable[[nn.Module, dict[str, Any]], torch.Tensor], minibatches: int, num_epochs: int,
                rule: SplitRule) -> list[dict[str, Any]]:
    """`batch` as `minibatches` trainer batches of whole groups, each with `policy`'s `old_logps` (computed
    here, before any of them trains), `num_epochs` times over in the same order; the statistics columns
    stay with the first one, which also carries the time this took. One step: `[batch]`, no old pass."""
    if minibatches * num_epochs == 1:
        return [batch]
    t0 = time.perf_counter()
    parts = split_batch(batch, minibatches, rule)
    for part in parts:
        part["old_logps"] = old_logps_fn(policy, part)
    first, elapsed = parts[0], time.perf_counter() - t0
    for key in (f"{STAT}sum/time_old_logps_s", f"{STAT}sum/time_batch_s"):  # the learner's time in here
        col = first[key].clone() if key in first else torch.zeros(len(first["advantages"]))
        col[0] += elapsed
        first[key] = col
    plain = [{k: v for k, v in p.items() if not k.startswith(STAT)} for p in parts]
    return [first] + plain[1:] + [dict(p) for _ in range(num_epochs - 1) for p in plain]
