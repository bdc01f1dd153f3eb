"""Hand-written autograd functions: the block's elementwise pieces (RMSNorm, SwiGLU, RoPE) and the
small-block attention of the sliding-window layers on CPU.

Each computes exactly what the composite PyTorch expression computes (tests compare values and
gradients in float64), but in fewer passes over memory, which is what these ops cost on a CPU:

* `rms_norm`: the composite backward of `F.rms_norm` on CPU runs ~12 elementwise kernels; this one
  runs 5 (measured 6.4 -> 4.2 ms forward + backward for `[8, 512, 256]` fp32, 2 threads).
* `swiglu`: takes the fused gate/up projection output `[..., 2I]` and writes both halves of its
  gradient into one buffer, so autograd never concatenates the two halves (a full `[..., 2I]` copy
  per layer) and no `dh * up` temporary is allocated.
* `rope`: rotates with one multiply and two half-width fused multiply-adds instead of negate, concat,
  two multiplies and an add; the backward is the inverse rotation, computed the same way.
* `block_attention`: softmax attention over many small blocks (`[N, Lq, hd]` queries against
  `[N, Lk, hd]` keys, an additive mask) as batched GEMMs. For the block-local sliding window
  (`flowlm.model.olmo3.local_window_attention`, 128 x 256 blocks in the tiny preset) this is faster on CPU
  than SDPA's fused CPU kernel, which splits such short blocks into 32-query pieces (measured
  fwd + bwd of one tiny-preset layer's attention: ~43 vs ~48 ms, 2 threads). It holds the
  `[N, Lq, Lk]` probabilities, so callers use it only where those are small.

Under `torch.compile` each entry point returns the plain composite expression instead (`*_composite`
below): inductor fuses those into a few generated kernels, forward and backward, whereas tracing the
hand-written backwards broke the compiled decoder layer into several graphs (an `out=` into a strided
view is not traceable) and compiled layers then ran no faster than eager ones.

Model code calls these through `flowlm.model.olmo3` / `flowlm.model.rope`; nothing here knows about
devices or distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):  # type: ignore[override]
        rstd = torch.rsqrt((x * x).mean(-1, keepdim=True).add_(eps))
        xhat = x * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        return xhat * weight

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        xhat, rstd, weight = ctx.saved_tensors
        dx = dw = None
        if ctx.needs_input_grad[1]:
            dw = (gy * xhat).reshape(-1, xhat.shape[-1]).sum(0)
        if ctx.needs_input_grad[0]:
            # y = xhat * w, xhat = x * rstd  =>  dx = rstd * (g - xhat * mean(g * xhat)), g = gy * w
            g = gy * weight
            dx = g.addcmul_(xhat, (g * xhat).mean(-1, keepdim=True), value=-1.0).mul_(rstd)
        return dx, dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`weight * x / sqrt(mean(x^2, -1) + eps)` over the last dimension (same dtype in and out)."""
    if torch.compiler.is_compiling():
        return rms_norm_composite(x, weight, eps)
    return _RMSNorm.apply(x, weight, eps)


def rms_norm_composite(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps))


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_up):  # type: ignore[override]
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(gate_up, act)
        return act * up

    @staticmethod
    def backward(ctx, dh):  # type: ignore[override]
        gate_up, act = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad = torch.empty_like(gate_up)
        d_gate, d_up = grad.chunk(2, dim=-1)
        torch.mul(dh, act, out=d_up)
        torch.mul(dh, up, out=d_gate)
        torch.ops.aten.silu_backward.grad_input(d_gate, gate, grad_input=d_gate)  # in place
        return grad


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * up` where `gate_up = [gate, up]` along the last dimension."""
    if torch.compiler.is_compiling():
        return swiglu_composite(gate_up)
    return _SwiGLU.apply(gate_up)


def swiglu_composite(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):  # type: ignore[override]
        half = x.shape[-1] // 2
        out = x * cos  # promotes to the tables' dtype
        # rotate_half(x) = [-x2, x1]:  out1 -= x2 * sin1,  out2 += x1 * sin2
        out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1.0)
        out[..., half:].addcmul_(x[..., :half], sin[..., half:])
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            raise RuntimeError("rope: gradients with respect to the cos/sin tables are not supported")
        half = g.shape[-1] // 2
        # transpose of the rotation: dx1 = g1 cos1 + g2 sin2,  dx2 = g2 cos2 - g1 sin1
        dx = g * cos
        dx[..., :half].addcmul_(g[..., half:], sin[..., half:])
        dx[..., half:].addcmul_(g[..., :half], sin[..., :half], value=-1.0)
        return dx, None, None


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x * cos + rotate_half(x) * sin` (HF convention) in the tables' dtype; tables broadcast to x."""
    if torch.compiler.is_compiling():
        return rope_composite(x, cos, sin)
    return _Rope.apply(x, cos, sin)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """`[x1, x2] -> [-x2, x1]` over the last dimension (HF convention)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_composite(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def _wide(x: torch.Tensor) -> torch.Tensor:
    """fp32 for 16-bit floats (scores and softmax), unchanged otherwise."""
    return x.float() if x.element_size() < 4 else x


# A custom op pair rather than an autograd.Function so compiled code calls it as one opaque kernel
# (inductor's own version of this composite was slower than SDPA; this one is faster than both).
@torch.library.custom_op("flowlm::block_attention", mutates_args=())
def _block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    s = _wide(torch.bmm(q * scale, k.transpose(1, 2)))
    s.view(bias.shape[0], -1, *bias.shape[1:]).add_(bias.unsqueeze(1))  # broadcast over heads
    p = torch.softmax(s, dim=-1)
    return torch.bmm(p.to(v.dtype), v), p


@_block_attention.register_fake
def _(q, k, v, bias, scale):
    wide = torch.float32 if q.element_size() < 4 else q.dtype
    return q.new_empty((*q.shape[:2], v.shape[-1]), dtype=v.dtype), q.new_empty((*q.shape[:2], k.shape[1]), dtype=wide)


@torch.library.custom_op("flowlm::block_attention_backward", mutates_args=())
def _block_attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              p: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dv = torch.bmm(p.to(do.dtype).transpose(1, 2), do)
    dp = _wide(torch.bmm(do, v.transpose(1, 2)))
    ds = torch._softmax_backward_data(dp, p, -1, p.dtype).to(q.dtype)  # p * (dp - sum(p * dp))
    return torch.bmm(ds, k).mul_(scale), torch.bmm(ds.transpose(1, 2), q).mul_(scale), dv


@_block_attention_backward.register_fake
def _(do, q, k, v, p, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _block_attention_setup(ctx, inputs, output) -> None:
    q, k, v, _, scale = inputs
    ctx.save_for_backward(q, k, v, output[1])
    ctx.scale = scale


def _block_attention_grad(ctx, do, _dp):
    q, k, v, p = ctx.saved_tensors
    dq, dk, dv = _block_attention_backward(do.contiguous(), q, k, v, p, ctx.scale)
    return dq, dk, dv, None, None


_block_attention.register_autograd(_block_attention_grad, setup_context=_block_attention_setup)


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """`softmax(q k^T * scale + bias) v` per block: q `[N, Lq, hd]`, k/v `[N, Lk, hd]` -> `[N, Lq, hd]`.

    `bias` `[G, M, Lq, Lk]` (0 or -inf) is shared by the `N / (G * M)` heads of each group: the blocks
    are laid out `(group, head, block)`, i.e. `N = G * heads * M`. Scores and probabilities are at
    least fp32. Every query row must see at least one key.
    """
    return _block_attention(q, k, v, bias, scale)[0]
