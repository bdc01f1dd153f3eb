"""The hand-written RMSNorm / SwiGLU / RoPE autograd functions equal the composite PyTorch expressions."""

import pytest
import torch
import torch.nn.functional as F

from flowlm.model.kernels import rms_norm, rope, swiglu
from flowlm.model.rope import rotate_half


def _composite_rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _grads(fn, inputs, gy):
    return torch.autograd.grad(fn(*inputs), inputs, gy)


def test_rms_norm_by_hand() -> None:
    x = torch.tensor([[3.0, 4.0]])  # mean square 12.5
    w = torch.tensor([1.0, 2.0])
    expected = torch.tensor([[3.0, 8.0]]) / (12.5 ** 0.5)
    torch.testing.assert_close(rms_norm(x, w, 0.0), expected)


def test_rms_norm_gradcheck_and_matches_composite() -> None:
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-6), (x, w))
    gy = torch.randn(3, 5, 8, dtype=torch.float64)
    ours = _grads(lambda a, b: rms_norm(a, b, 1e-6), (x, w), gy)
    ref = _grads(lambda a, b: _composite_rms(a, b, 1e-6), (x, w), gy)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    # fp32 forward equals PyTorch's own rms_norm
    x32, w32 = x.float().detach(), w.float().detach()
    torch.testing.assert_close(rms_norm(x32, w32, 1e-6), F.rms_norm(x32, (8,), w32, 1e-6), rtol=0, atol=1e-6)


def test_rms_norm_on_a_strided_view() -> None:
    # q/k norms see column slices of the fused q/k/v projection
    full = torch.randn(4, 6, 24, dtype=torch.float64)
    x = full[..., 8:16].clone().requires_grad_()
    view = full.clone().requires_grad_()
    w = torch.randn(8, dtype=torch.float64)
    gy = torch.randn(4, 6, 8, dtype=torch.float64)
    (gx,) = torch.autograd.grad(rms_norm(view[..., 8:16], w, 1e-6), view, gy)
    (gref,) = torch.autograd.grad(rms_norm(x, w, 1e-6), x, gy)
    torch.testing.assert_close(gx[..., 8:16], gref)
    assert gx[..., :8].abs().sum() == 0 and gx[..., 16:].abs().sum() == 0


def test_swiglu_gradcheck_and_matches_composite() -> None:
    gu = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swiglu, (gu,))
    g, u = gu.detach().chunk(2, -1)
    torch.testing.assert_close(swiglu(gu), F.silu(g) * u)
    gy = torch.randn(2, 3, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad(swiglu(gu), gu, gy)
    (ref,) = torch.autograd.grad((lambda a, b: F.silu(a) * b)(*gu.chunk(2, -1)), gu, gy)
    torch.testing.assert_close(ours, ref)


def test_swiglu_by_hand() -> None:
    # silu(0) = 0, silu(x) = x * sigmoid(x); d/dgate at 0 is 0.5 * up
    gu = torch.tensor([[0.0, 2.0, 3.0, 5.0]], requires_grad=True)
    out = swiglu(gu)
    torch.testing.assert_close(out, torch.tensor([[0.0, 2.0 * torch.sigmoid(torch.tensor(2.0)).item() * 5.0]]))
    out[0, 0].backward()
    torch.testing.assert_close(gu.grad, torch.tensor([[1.5, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("table_shape", [(5, 8), (2, 5, 8)])
def test_rope_gradcheck_and_matches_rotate_half(table_shape) -> None:
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    cos = torch.randn(*table_shape, dtype=torch.float64).unsqueeze(-3)
    sin = torch.randn(*table_shape, dtype=torch.float64).unsqueeze(-3)
    assert torch.autograd.gradcheck(lambda a: rope(a, cos, sin), (x,))
    torch.testing.assert_close(rope(x, cos, sin), x * cos + rotate_half(x) * sin)


def test_rope_runs_in_the_tables_dtype() -> None:
    x = torch.randn(1, 2, 4, 8, dtype=torch.bfloat16, requires_grad=True)
    cos, sin = torch.randn(4, 8), torch.randn(4, 8)
    out = rope(x, cos, sin)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x.float() * cos + rotate_half(x.float()) * sin)
    out.sum().backward()
    assert x.grad.dtype == torch.bfloat16


def test_rope_refuses_table_gradients() -> None:
    x = torch.randn(1, 1, 2, 4)
    cos = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="cos/sin"):
        rope(x, cos, torch.randn(2, 4)).sum().backward()


@pytest.mark.parametrize("name", ["rms_norm", "swiglu", "rope"])
def test_composite_forms_equal_the_hand_written_functions(name) -> None:
    # Under torch.compile each entry point returns its `*_composite` form: same values and gradients.
    from flowlm.model import kernels

    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    args = {"rms_norm": (torch.randn(8, dtype=torch.float64), 1e-6), "swiglu": (),
            "rope": (torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64))}[name]
    hand, composite = getattr(kernels, name), getattr(kernels, f"{name}_composite")
    out = hand(x, *args)
    torch.testing.assert_close(composite(x, *args), out)
    gy = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(composite(x, *args), x, gy)[0], torch.autograd.grad(out, x, gy)[0])


def _block_attention_composite(q, k, v, bias, scale):
    s = (q * scale) @ k.transpose(1, 2)
    s = (s.view(bias.shape[0], -1, *bias.shape[1:]) + bias.unsqueeze(1)).view(s.shape)
    return torch.softmax(s, dim=-1) @ v


def test_block_attention_by_hand_and_composite() -> None:
    from flowlm.model.kernels import block_attention

    # One block, one query, two keys, the second masked: the output is the first value exactly.
    q = torch.tensor([[[1.0, 0.0]]])
    k = torch.tensor([[[1.0, 0.0], [5.0, 5.0]]])
    v = torch.tensor([[[2.0, 3.0], [7.0, 9.0]]])
    bias = torch.tensor([[[[0.0, float("-inf")]]]])
    torch.testing.assert_close(block_attention(q, k, v, bias, 1.0), torch.tensor([[[2.0, 3.0]]]))
    # Against the composite, values and gradients: 2 groups x 3 heads x 4 blocks, bias shared over heads.
    q, k, v = (torch.randn(24, 5, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.where(torch.rand(2, 4, 5, 5) < 0.3, float("-inf"), 0.0).double()
    bias[..., 0] = 0.0  # every row sees a key
    gy = torch.randn(24, 5, 8, dtype=torch.float64)
    a = block_attention(q, k, v, bias, 0.3)
    b = _block_attention_composite(q, k, v, bias, 0.3)
    torch.testing.assert_close(a, b)
    for x, y in zip(torch.autograd.grad(a, (q, k, v), gy), torch.autograd.grad(b, (q, k, v), gy)):
        torch.testing.assert_close(x, y)
