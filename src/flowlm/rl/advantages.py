"""Group-relative advantages, the reward shaping that precedes them and the zero-std filter that follows
(with active sampling's draw size, `oversample`), as pure functions.

Layout: `n` completions per prompt, grouped prompt by prompt. Rewards are `[G, n]`, or flat `[G * n]`
with `group_size=n` (completion `i` belongs to group `i // n`); every function returns the shape it was
given. Rewards must be finite (a verifier returns a score, never None; see `flowlm.verify`).

The general form (`group_advantages`) is `A_i = (r_i - b_i) / s`, with
- baseline `b`: the group mean (GRPO, Shao et al. 2024) or the mean of the *other* completions of the
  group (RLOO, Ahmadian et al. 2024; equal to `n / (n - 1)` times the mean-centred reward);
- scale `s`: the group's std plus `eps` (GRPO), the std of all rewards of the batch plus `eps` (TRL
  `scale_rewards="batch"`), or 1 (Dr GRPO, Liu et al. 2025; open-instruct `--advantage_normalization_type
  centered`, which every OLMo 3 RL run used: `/work/shared/reference/rl-anchors.md` §0).
Stds are unbiased (Bessel's correction), as `torch.std` in veRL and open-instruct and `nanstd` in TRL;
a group of one has std 0. Named estimators are registered as in veRL `core_algos`
(`advantage_estimator("grpo")`); each is one line over the general form.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Literal

import torch

Scale = Literal["group_std", "batch_std", "none"]
Baseline = Literal["mean", "leave_one_out"]
AdvantageEstimator = Callable[..., torch.Tensor]


def _grouped(rewards: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """`[G, n]` view of `rewards` (`[G, n]`, or `[G * n]` with `group_size`)."""
    if rewards.dim() == 2:
        if group_size is not None and group_size != rewards.shape[1]:
            raise ValueError(f"group_size {group_size} disagrees with rewards of shape {tuple(rewards.shape)}")
        return rewards
    if rewards.dim() != 1 or group_size is None or group_size < 1:
        raise ValueError("rewards must be [G, n], or [G * n] with group_size = n >= 1")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def _std(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Unbiased std over `dim` (all elements when None), 0 where there is a single element."""
    count = x.numel() if dim is None else x.shape[dim]
    if count < 2:
        return torch.zeros(() if dim is None else x.shape[:dim], dtype=x.dtype, device=x.device)
    return x.std() if dim is None else x.std(dim=dim)


def group_advantages(rewards: torch.Tensor, group_size: int | None = None, *, scale: Scale = "none",
                     baseline: Baseline = "mean", eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages `(r - b) / s`, one per completion, in the shape of `rewards`.

    Normalisation: `b` is the group mean (`baseline="mean"`) or the leave-one-out mean
    `(Σ_group r - r_i) / (n - 1)` (`"leave_one_out"`, needs `n >= 2`). `s` is `std_group + eps`
    (`scale="group_std"`), `std_batch + eps` over every reward passed in (`"batch_std"`: pass the whole
    global batch, not one rank's share, for the global std), or 1 (`"none"`, Dr GRPO / OLMo 3
    "centered"). TRL adds `eps = 1e-4`, veRL `1e-6`, open-instruct `1e-8`.
    """
    r = _grouped(rewards.float(), group_size)
    n = r.shape[1]
    mean = r.mean(dim=1, keepdim=True)
    if baseline == "mean":
        adv = r - mean
    elif baseline == "leave_one_out":
        if n < 2:
            raise ValueError("a leave-one-out baseline needs at least 2 completions per group")
        adv = (r - mean) * (n / (n - 1))  # r_i - (n·mean - r_i)/(n-1), rearranged
    else:
        raise ValueError(f"baseline must be 'mean' or 'leave_one_out', got {baseline!r}")
    if scale == "group_std":
        adv = adv / (_std(r, 1)[:, None] + eps)
    elif scale == "batch_std":
        adv = adv / (_std(r, None) + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'group_std', 'batch_std' or 'none', got {scale!r}")
    return adv.reshape(rewards.shape)


_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage_estimator(*names: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: make `fn(rewards, group_size=None, *, eps=...) -> advantages` selectable by each name."""

    def deco(fn: AdvantageEstimator) -> AdvantageEstimator:
        for name in names:
            _ESTIMATORS[name] = fn
        return fn

    return deco


def advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered as `name` (ValueError naming the closest known one otherwise)."""
    if name not in _ESTIMATORS:
        hint = difflib.get_close_matches(name, list(_ESTIMATORS), n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ValueError(f"unknown advantage estimator '{name}'{extra}; known: {', '.join(sorted(_ESTIMATORS))}")
    return _ESTIMATORS[name]


def advantage_estimator_names() -> list[str]:
    return sorted(_ESTIMATORS)


@register_advantage_estimator("grpo")
def grpo_advantages(rewards: torch.Tensor, group_size: int | None = None, *, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: `(r - mean_group) / (std_group + eps)` (TRL `scale_rewards="group"`)."""
    return group_advantages(rewards, group_size, scale="group_std", eps=eps)


@register_advantage_estimator("grpo_batch_std")
def grpo_batch_std_advantages(rewards: torch.Tensor, group_size: int | None = None, *,
                              eps: float = 1e-6) -> torch.Tensor:
    """`(r - mean_group) / (std_batch + eps)` (TRL `scale_rewards="batch"`)."""
    return group_advantages(rewards, group_size, scale="batch_std", eps=eps)


@register_advantage_estimator("dr_grpo", "centered")
def centered_advantages(rewards: torch.Tensor, group_size: int | None = None, *, eps: float = 1e-6) -> torch.Tensor:
    """Dr GRPO / OLMo 3 `centered`: `r - mean_group`, no std scaling (`eps` unused)."""
    return group_advantages(rewards, group_size, scale="none")


@register_advantage_estimator("rloo")
def rloo_advantages(rewards: torch.Tensor, group_size: int | None = None, *, eps: float = 1e-6) -> torch.Tensor:
    """RLOO: `r_i - mean_{j != i} r_j`, no std scaling (`eps` unused)."""
    return group_advantages(rewards, group_size, baseline="leave_one_out")


def informative_groups(rewards: torch.Tensor, group_size: int | None = None, *, atol: float = 0.0) -> torch.Tensor:
    """`[G]` bool: True where a group's rewards are not all equal (max - min > `atol`).

    A group whose rewards are all equal has std 0, hence zero advantages under every estimator above
    and no policy gradient; zero-std filtering (open-instruct `--filter_zero_std_samples`, DAPO dynamic
    sampling) drops those groups. Unlike filtering on the group mean (OpenRLHF#1270), this also holds
    for non-binary rewards.
    """
    r = _grouped(rewards, group_size)
    return (r.amax(dim=1) - r.amin(dim=1)) > atol


def oversample(need: int, informative: int, seen: int, cap: float) -> int:
    """Prompts to draw in a later round of active sampling for a shortfall of `need` informative groups,
    when `informative` of the `seen` groups drawn so far for this batch were: the shortfall divided by the
    informative share (smoothed as (informative + 1) / (seen + 2), so 0 of 4 is 1/6, not 0), rounded up,
    at most `floor(cap * need)`. `cap` 1 draws the shortfall only. On a hard prompt set (a tenth of the
    groups informative) drawing only the shortfall takes many small rounds and often runs out of them.
    veRL's DAPO recipe oversamples a fixed 3x per round (`gen_batch_size` 1536 for 512 prompts, up to 10
    rounds); open-instruct's async active sampling queues a new prompt as each one finishes.
    """
    if need <= 0:
        return 0
    wanted = -(-need * (seen + 2) // (informative + 1))  # ceil(need / share), in integers
    return min(wanted, math.floor(cap * need))  # >= need: the share is at most 1 and cap at least 1


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, *, factor: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, Eq. 13), the amount to *add* to each reward.

    With `L = lengths`, `L_max = max_len`, `L_buf = buffer`: 0 when `L <= L_max - L_buf`;
    `factor · ((L_max - L_buf) - L) / L_buf` (linear from 0 down to `-factor`) when
    `L_max - L_buf < L <= L_max`; `-factor` when `L > L_max`. `buffer = 0` gives 0 up to `max_len`.
    Same numbers as TRL `trl.rewards.get_soft_overlong_punishment` when `factor = 1`.
    """
    if buffer < 0 or buffer > max_len:
        raise ValueError(f"buffer must be in [0, max_len={max_len}], got {buffer}")
    length = lengths.float()
    start = max_len - buffer
    ramp = (start - length) / max(buffer, 1) * factor
    zero = torch.zeros_like(length)
    return torch.where(length <= start, zero, torch.where(length <= max_len, ramp, zero - factor))


def hit_length_limit(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """`[B]` bool: completions whose length reached `max_len`.

    A proxy for "truncated": prefer the rollout engine's finish reason (`length` vs `stop`), which
    tells apart a completion that ended with EOS exactly at the limit.
    """
    return lengths >= max_len


def mask_truncated(completion_mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """`completion_mask` (`[B, T]`) with the rows of truncated completions (`truncated`: `[B]` bool)
    zeroed, so they add nothing to the loss (DAPO overlong filtering; TRL and open-instruct
    `mask_truncated_completions`). Their advantages still enter their group's baseline; the zeroed
    tokens leave the token-normalised denominator, the sequences still count in the sequence one.
    """
    if truncated.shape != completion_mask.shape[:1]:
        raise ValueError(f"truncated must be [B={completion_mask.shape[0]}], got {tuple(truncated.shape)}")
    return torch.where(truncated.bool()[:, None], torch.zeros_like(completion_mask), completion_mask)
