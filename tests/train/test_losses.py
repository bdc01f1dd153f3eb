"""Pure loss functions against hand-computed values."""

import math

import pytest
import torch

from flowlm.train.losses import lm_loss_sum, token_logprobs


def test_lm_loss_sum_hand_computed():
    # two positions, vocab 2; second is ignored.
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 0.0]]])
    labels = torch.tensor([[1, -100]])
    total, z, n = lm_loss_sum(logits, labels)
    # p(1) = 3/4 -> CE = -log(0.75)
    assert n == 1
    assert float(total) == pytest.approx(-math.log(0.75), abs=1e-6)
    assert float(z) == 0.0


def test_z_loss_adds_squared_logsumexp():
    logits = torch.tensor([[[0.0, 0.0]]])
    labels = torch.tensor([[0]])
    total, z, n = lm_loss_sum(logits, labels, z_loss=0.5)
    lse = math.log(2.0)
    assert float(z) == pytest.approx(lse**2, abs=1e-6)
    assert float(total) == pytest.approx(math.log(2.0) + 0.5 * lse**2, abs=1e-6)


def test_token_logprobs_gathers_and_masks():
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    lp = token_logprobs(logits, torch.tensor([[1, -100]]))
    assert lp[0, 0].item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert lp[0, 1].item() == 0.0


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_fused_linear_cross_entropy_equals_unfused(z_loss):
    from flowlm.train.losses import fused_linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(2, 37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 37))
    labels[0, :5] = -100  # ignored positions
    t1, z1, n1 = lm_loss_sum(h @ w.T, labels, z_loss)
    g1 = torch.autograd.grad(t1 * 1.7, (h, w))  # a non-unit upstream gradient
    # chunk of 8 rows does not divide the 74 rows: the last chunk is partial
    t2, z2, n2 = fused_linear_cross_entropy(h, w, labels, z_loss, chunk_rows=8)
    g2 = torch.autograd.grad(t2 * 1.7, (h, w))
    assert n1 == n2 == 69
    assert float(t2.detach()) == pytest.approx(float(t1.detach()), rel=1e-5)
    if z_loss:
        assert float(z2) == pytest.approx(float(z1), rel=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_fused_linear_cross_entropy_hand_computed():
    from flowlm.train.losses import fused_linear_cross_entropy

    # hidden = [1], weight rows give logits [0, log 3]; label 1 -> CE = -log(3/4); row 2 ignored
    h = torch.tensor([[1.0], [2.0]], requires_grad=True)
    w = torch.tensor([[0.0], [math.log(3.0)]], requires_grad=True)
    total, z, n = fused_linear_cross_entropy(h, w, torch.tensor([1, -100]), z_loss=0.0, chunk_rows=1)
    assert n == 1
    assert float(total) == pytest.approx(-math.log(0.75), abs=1e-6)
    total.backward()
    # d/dlogits = softmax - onehot = [1/4, -1/4]; dh = that @ w = -log(3)/4; ignored row gets 0
    assert h.grad[0, 0].item() == pytest.approx(-math.log(3.0) / 4, abs=1e-6)
    assert h.grad[1, 0].item() == 0.0
    assert w.grad[:, 0].tolist() == pytest.approx([0.25, -0.25], abs=1e-6)


def test_fused_linear_cross_entropy_under_bf16_autocast_matches_unfused():
    from flowlm.train.losses import fused_linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(100, 32, requires_grad=True)
    labels = torch.randint(0, 100, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t1, _, _ = lm_loss_sum(torch.nn.functional.linear(h, w), labels)
        t2, _, _ = fused_linear_cross_entropy(h, w, labels, chunk_rows=16)
    g1, g2 = torch.autograd.grad(t1, (h, w)), torch.autograd.grad(t2, (h, w))
    assert float(t2.detach()) == pytest.approx(float(t1.detach()), rel=1e-3)
    for a, b in zip(g1, g2):
        assert b.dtype == a.dtype == torch.float32
        assert float((a - b).abs().max() / a.abs().max()) < 1e-2  # bf16 matmuls


def test_fused_linear_cross_entropy_without_grad_gives_the_loss_only():
    from flowlm.train.losses import fused_linear_cross_entropy

    torch.manual_seed(0)
    h, w = torch.randn(10, 8), torch.randn(30, 8)
    labels = torch.randint(0, 30, (10,))
    with torch.no_grad():
        total, _, n = fused_linear_cross_entropy(h, w, labels, chunk_rows=4)
    ref, _, _ = lm_loss_sum(h @ w.T, labels)
    assert n == 10 and not total.requires_grad
    assert float(total) == pytest.approx(float(ref), rel=1e-5)


@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
def test_chunk_loss_grad_equals_autograd(z_loss):
    # The pure per-chunk function the CUDA path compiles: its gradient is that of ce + z_loss * z.
    from flowlm.train.losses import chunk_loss_grad

    torch.manual_seed(0)
    logits = (torch.randn(9, 13) * 3).requires_grad_()
    labels = torch.tensor([0, 12, -100, 5, 5, -100, 1, 7, 3])
    ce_ref, z_ref, _ = lm_loss_sum(logits, labels, z_loss)  # ce_ref already holds ce + z_loss * z
    (ref_grad,) = torch.autograd.grad(ce_ref, logits)
    g, ce, z = chunk_loss_grad(logits.detach(), labels, z_loss)
    assert float(ce + z_loss * z) == pytest.approx(float(ce_ref), rel=1e-6)
    if z_loss:  # lm_loss_sum reports z only when it is used
        assert float(z) == pytest.approx(float(z_ref), rel=1e-6)
    torch.testing.assert_close(g, ref_grad, rtol=1e-5, atol=1e-6)
    assert g[2].abs().max() == 0 and g[5].abs().max() == 0  # ignored rows get no gradient


def test_fused_linear_cross_entropy_compiled_chunks_equal_in_place():
    # The compiled per-chunk path (the CUDA default) gives the in-place path's loss and gradients.
    from flowlm.train.losses import fused_linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(64, 16, requires_grad=True)
    w = torch.randn(40, 16, requires_grad=True)
    labels = torch.randint(0, 40, (64,))
    labels[::5] = -100
    out = []
    for compiled in (False, True):
        total, z, n = fused_linear_cross_entropy(h, w, labels, z_loss=1e-3, chunk_rows=16, compiled=compiled)
        out.append((float(total.detach()), float(z), n, *torch.autograd.grad(total, (h, w))))
    assert out[0][2] == out[1][2] == 51
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-5) and out[1][1] == pytest.approx(out[0][1], rel=1e-5)
    torch.testing.assert_close(out[1][3], out[0][3], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out[1][4], out[0][4], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("unlabelled", [0.05, 0.4, 1.0])
def test_fused_linear_cross_entropy_skipping_unlabelled_rows_changes_nothing(monkeypatch, unlabelled):
    # Rows without a label are projected only below `SKIP_UNLABELLED` (here 5 % stays under it, 40 % and
    # all-unlabelled skip); either way the loss, z-loss and gradients are those of every row projected.
    from flowlm.train import losses

    torch.manual_seed(0)
    h = torch.randn(3, 20, 16, requires_grad=True)
    w = torch.randn(40, 16, requires_grad=True)
    labels = torch.randint(0, 40, (3, 20))
    labels.view(-1)[torch.randperm(60)[:round(60 * unlabelled)]] = -100
    out = []
    for skip in (losses.SKIP_UNLABELLED, 2.0):  # 2.0: never skip
        monkeypatch.setattr(losses, "SKIP_UNLABELLED", skip)
        total, z, n = losses.fused_linear_cross_entropy(h, w, labels, z_loss=1e-3, chunk_rows=7)
        out.append((total.detach(), z, n, *torch.autograd.grad(total, (h, w))))
    ref, _, _ = lm_loss_sum(h.detach() @ w.detach().T, labels, 1e-3)
    assert out[0][2] == out[1][2] == int((labels != -100).sum())
    for a, b in zip(out[0][:2] + out[0][3:], out[1][:2] + out[1][3:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0][0], ref, rtol=1e-5, atol=1e-6)
    assert out[0][3].shape == h.shape and bool((out[0][3][labels == -100] == 0).all())
