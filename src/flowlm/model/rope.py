"""Rotary position embeddings as pure functions: plain RoPE, YaRN-scaled RoPE, cos/sin tables, rotation.

Conventions match Hugging Face (`rotate_half`: the head dimension is split into two halves, not
interleaved pairs) so weights move between flowlm and `transformers` unchanged. Nothing here holds
state, so a generation engine with a KV cache can call `cos_sin` for the new positions only and
`apply_rope` on the new queries/keys.
"""

from __future__ import annotations

import math

import torch

from flowlm.model.config import ModelConfig, YarnConfig
from flowlm.model.kernels import rope, rotate_half  # noqa: F401 (rotate_half: public here too)


def rope_inv_freq(head_dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """Inverse frequencies `theta ** (-2i / head_dim)` for i in [0, head_dim/2), fp32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (theta ** exponents)


def yarn_attention_scale(factor: float) -> float:
    """YaRN's cos/sin multiplier ("mscale"): 0.1 * ln(factor) + 1, and 1 when not extending."""
    return 1.0 if factor <= 1.0 else 0.1 * math.log(factor) + 1.0


def _correction_dim(num_rotations: float, head_dim: int, theta: float, original_len: int) -> float:
    """Dimension index whose wavelength fits `num_rotations` times into the original context."""
    return head_dim * math.log(original_len / (num_rotations * 2 * math.pi)) / (2 * math.log(theta))


def yarn_inv_freq(head_dim: int, theta: float, yarn: YarnConfig,
                  device: torch.device | None = None) -> tuple[torch.Tensor, float]:
    """YaRN ("NTK-by-parts") inverse frequencies and attention scale.

    High-frequency dimensions (more than `beta_fast` rotations over the original context) keep plain
    RoPE, low-frequency ones (fewer than `beta_slow`) are divided by `factor`, and a linear ramp blends
    the band between. The band edges are floored/ceiled as in transformers' `_compute_yarn_parameters`
    (`truncate=True`), so exported checkpoints reproduce exactly.
    """
    base = rope_inv_freq(head_dim, theta, device)
    low = max(math.floor(_correction_dim(yarn.beta_fast, head_dim, theta, yarn.original_max_seq_len)), 0)
    high = min(math.ceil(_correction_dim(yarn.beta_slow, head_dim, theta, yarn.original_max_seq_len)),
               head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32, device=device) - low) / (high - low)).clamp(0, 1)
    keep = 1.0 - ramp  # 1 = extrapolate (plain RoPE), 0 = interpolate (divide by factor)
    inv_freq = (base / yarn.factor) * (1.0 - keep) + base * keep
    return inv_freq, yarn_attention_scale(yarn.factor)


def layer_rope(cfg: ModelConfig, layer_type: str,
               device: torch.device | None = None) -> tuple[torch.Tensor, float]:
    """`(inv_freq, scale)` for one layer kind: YaRN on full-attention layers when `cfg.yarn` is set,
    plain RoPE otherwise (OLMo-core `with_rope_scaling(..., full_attn_layers_only=True)`)."""
    if cfg.yarn is not None and layer_type == "full_attention":
        return yarn_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.yarn, device)
    return rope_inv_freq(cfg.head_dim, cfg.rope_theta, device), 1.0


def cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, scale: float = 1.0,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables `[*positions.shape, head_dim]` (angles in fp32, then multiplied by `scale`).

    `positions` is `[T]` or `[B, T]` (integer); the angle table is duplicated over the two halves of the
    head dimension to suit `apply_rope`.
    """
    angles = positions.to(torch.float32)[..., None] * inv_freq.to(positions.device, torch.float32)
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos(), angles.sin()
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos.to(dtype), sin.to(dtype)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys laid out `[B, heads, T, head_dim]` by tables `[T, hd]` or `[B, T, hd]`.

    The rotation runs in the tables' dtype (fp32 from `cos_sin` by default, as HF does for bf16
    models) and the result is cast back to the inputs' dtype.
    """
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # broadcast over heads
    q_out, k_out = rope(q, cos, sin), rope(k, cos, sin)  # = x * cos + rotate_half(x) * sin
    return q_out.to(q.dtype), k_out.to(k.dtype)
