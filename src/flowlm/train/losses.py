"""Loss functions as small pure tensor functions (sums, so the engine can weight by tokens).

`fused_linear_cross_entropy` is the LM head and `lm_loss_sum` in one: it never materialises the
`[N, V]` logits, their log-softmax or their gradient at once (see its docstring).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

IGNORE = -100
# `fused_linear_cross_entropy` projects only the labelled rows when at least this share of rows has no
# label. Unlabelled rows add nothing to the loss and get a zero gradient, so skipping them is the same
# maths, but other chunk boundaries and GEMM lengths round differently. Below the threshold every row is
# projected, which keeps LM runs bit-for-bit what they were (`tests/flow/test_golden.py`: its pretraining
# micro-batches are up to 16 % unlabelled, BFD padding in 2 x 128-token rows; 0.1 changed its losses).
# SFT rows skip their prompts: 32 % of the positions in `benchmarks/sft_throughput.py`; its head, forward +
# backward of `[4096, 256] x [256, 8192]` with 2,778 rows labelled, went from 743 to 534 ms CPU time
# (2 threads, alternating in one process, minimum of 8).
SKIP_UNLABELLED = 0.2


def lm_loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, z_loss: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Next-token cross-entropy summed over labelled positions.

    Args:
        logits: `[..., V]` scores (any float dtype; computed in fp32).
        labels: `[...]` target ids, `-100` where no loss is taken.
        z_loss: multiplier of the z-loss `lse(logits)^2` (PaLM; OLMo 3 pretraining uses 1e-5).

    Returns:
        `(ce_sum + z_loss · z_sum, z_sum, n_tokens)`: the total to backpropagate, the unweighted z-loss
        sum (for logging), and the number of labelled tokens. Normalisation is the caller's: dividing by
        the token count of the whole accumulation group makes micro-batching equal one big batch.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_labels = labels.reshape(-1)
    ce = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE, reduction="sum")
    n_tokens = int((flat_labels != IGNORE).sum())
    if z_loss == 0.0:
        return ce, ce.new_zeros(()), n_tokens
    # Weight by the mask instead of boolean-indexing the [N, V] logits: indexing copies them and its
    # backward scatters into a fresh [N, V] tensor (measured ~0.15 s per 8x512 step on our CPU).
    mask = (flat_labels != IGNORE).to(flat_logits.dtype)
    lse = torch.logsumexp(flat_logits, dim=-1)
    z = (lse * lse * mask).sum()
    return ce + z_loss * z, z.detach(), n_tokens


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target token: `log softmax(logits)[..., target]`, fp32, same shape as targets.

    Positions whose target is `-100` get 0.
    """
    safe = targets.clamp_min(0)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp.masked_fill(targets == IGNORE, 0.0)


def fused_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, z_loss: float = 0.0,
    chunk_rows: int | None = None, compiled: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`lm_loss_sum(hidden @ weight.T, labels, z_loss)` computed in row chunks, gradients included.

    Args:
        hidden: `[..., D]` final hidden states.
        weight: `[V, D]` LM head.
        labels: `[...]` target ids, `-100` where no loss is taken.
        z_loss: z-loss multiplier, as in `lm_loss_sum`.
        chunk_rows: rows of logits alive at once (`chunk_rows x V` fp32); default: as many as fit in
            64 MiB on CPU (2,048 rows for V = 8,192; 256 for V = 100,352), 1 GiB on a GPU (2,674 rows
            for V = 100,352), at least 256. Larger chunks make larger GEMMs: 256 -> 2,048 rows cut
            forward + backward of the `[4096, 256] x [256, 8192]` head by ~20% on our CPU.
        compiled: per-chunk loss and gradient through `torch.compile(chunk_loss_grad)` (default: on
            CUDA only, where it is faster; see `chunk_loss_grad`).

    Returns the same triple as `lm_loss_sum`. Per chunk the forward computes the logits, their
    log-sum-exp, the loss terms and, since the loss is a sum, the exact gradient with respect to the
    logits, `(softmax - onehot) * valid + 2 z lse softmax * valid`, which it folds straight into the
    gradients of `hidden` and `weight`. Backward only scales those by the incoming gradient. Peak
    memory drops from several `[N, V]` fp32 tensors (3 x 134 MB for 8 x 512 tokens and V = 8,192) to
    one `[chunk_rows, V]` buffer. On CPU both paths are bound by the three LM-head GEMMs once freed
    memory is kept (`flowlm.train.cpu_malloc`): with 256-row chunks they ran equally fast, with the default
    2,048-row chunks this one is a little faster (411 vs 442 ms, best of 8, forward + backward for
    `[4096, 256] x [256, 8192]`); with glibc's default allocator the unfused path re-faults its
    `[N, V]` tensors every step and is slower. When no input needs a gradient
    (evaluation under `no_grad`) only the loss is computed. When at least `SKIP_UNLABELLED` of the rows
    carry no label (SFT: prompts), only the labelled rows are projected, as TRL's fused head does; their
    gradient rows are zero either way.
    Matmuls run in the autocast dtype when autocast is on, logits and their reductions in fp32; the
    weight gradient is then one low-precision GEMM per chunk (fp32 accumulation inside it) added into an
    fp32 sum, as autocast's own linear backward would round it once for the whole batch.
    """
    if chunk_rows is None:
        budget = 1 << 24 if hidden.device.type == "cpu" else 1 << 28  # fp32 logits elements
        chunk_rows = max(256, budget // weight.shape[0])
    if compiled is None:
        compiled = hidden.device.type == "cuda"
    return _FusedLinearCE.apply(hidden, weight, labels, float(z_loss), int(chunk_rows), bool(compiled))


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, z_loss, chunk_rows, compiled):  # type: ignore[override]
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        device_type = hidden.device.type
        dt = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        with torch.autocast(device_type=device_type, enabled=False):
            x_all = hidden.reshape(-1, hidden.shape[-1])
            lab = labels.reshape(-1)
            n_tokens = int((lab != IGNORE).sum())
            keep = None
            if lab.numel() - n_tokens >= SKIP_UNLABELLED * lab.numel():
                keep = (lab != IGNORE).nonzero().squeeze(1)
                x_all, lab = x_all[keep], lab[keep]
            w = weight.to(dt)
            grad_h = torch.empty(x_all.shape, dtype=hidden.dtype, device=hidden.device)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            ce = torch.zeros((), dtype=torch.float32, device=hidden.device)
            z = torch.zeros((), dtype=torch.float32, device=hidden.device)
            buf = torch.empty((min(chunk_rows, x_all.shape[0]), w.shape[0]), dtype=dt, device=hidden.device)
            fused_chunk = need_grad and compiled
            for s in range(0, x_all.shape[0], chunk_rows):
                x = x_all[s:s + chunk_rows].to(dt)
                lbl = lab[s:s + chunk_rows]
                # one logits buffer reused by every chunk (no fresh allocation per chunk)
                if fused_chunk:  # one generated kernel pair instead of ~10 passes over [c, V]
                    logits = torch.mm(x, w.t(), out=buf[:x.shape[0]])  # [c, V]
                    g, ce_c, z_c = _compiled_chunk()(logits, lbl, z_loss)
                    ce += ce_c
                    z += z_c
                else:
                    # [c, V] as the transpose of a [V, c] product: that GEMM orientation runs ~15% faster
                    # on our CPU (MKL, K = hidden size), and the two gradient GEMMs below then read it
                    # in the orientation that suits them (head forward + backward ~2% faster in all).
                    logits = torch.mm(w, x.t(), out=buf.view(-1)[:w.shape[0] * x.shape[0]].view(w.shape[0], -1)).t()
                    logits = logits.float()
                    valid = (lbl != IGNORE).to(torch.float32)
                    idx = lbl.clamp_min(0).unsqueeze(1)
                    target = logits.gather(1, idx).squeeze(1)
                    m = logits.amax(dim=1)
                    logits.sub_(m.unsqueeze(1)).exp_()  # exp(logit - max)
                    sumexp = logits.sum(dim=1)
                    lse = m + sumexp.log()
                    ce += ((lse - target) * valid).sum()
                    z += (lse * lse * valid).sum()
                    if not need_grad:
                        continue
                    # d(loss)/d(logits) = softmax * valid * (1 + 2 z lse) - onehot * valid
                    logits.mul_((valid * (1.0 + 2.0 * z_loss * lse) / sumexp).unsqueeze(1))
                    logits.scatter_add_(1, idx, -valid.unsqueeze(1))
                    g = logits.to(dt)
                grad_h[s:s + chunk_rows] = (g @ w).to(hidden.dtype)
                _add_weight_grad(grad_w, g, x)
        if keep is not None:  # unlabelled rows: zero gradient, as the full computation gives them
            grad_h = torch.zeros((hidden.numel() // hidden.shape[-1], hidden.shape[-1]), dtype=hidden.dtype,
                                 device=hidden.device).index_copy_(0, keep, grad_h)
        ctx.save_for_backward(grad_h.view(hidden.shape), grad_w.to(weight.dtype))
        ctx.mark_non_differentiable(z)
        return ce + z_loss * z, z, n_tokens

    @staticmethod
    def backward(ctx, grad_total, grad_z, grad_n):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_total.to(grad_h.dtype), grad_w * grad_total.to(grad_w.dtype), None, None, None, None


def _add_weight_grad(grad_w: torch.Tensor, g: torch.Tensor, x: torch.Tensor) -> None:
    """`grad_w += g.T @ x` into the fp32 sum; for bf16/fp16 `g`, `x` one tensor-core GEMM, then the add
    (an fp32 GEMM on upcast copies cost ~10% of a 1B training step on an H100)."""
    if g.dtype == torch.float32:
        grad_w.addmm_(g.t(), x)
    else:
        grad_w.add_(torch.mm(g.t(), x))


def chunk_loss_grad(logits: torch.Tensor, labels: torch.Tensor, z_loss: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one chunk of logits `[c, V]`: the gradient of `ce_sum + z_loss * z_sum` with respect to them
    (in the logits' dtype), `ce_sum` and `z_sum` (fp32), as a pure function.

    Written so a compiler can fuse it: on CUDA, `fused_linear_cross_entropy` runs it through
    `torch.compile`, which makes it one reduction (row max and sum of exps) and one pointwise kernel,
    reading the low-precision logits twice and writing the gradient once, where the step-by-step
    in-place version makes about ten passes over an fp32 copy. The CPU keeps the in-place version:
    compiled for the CPU this function was slower (forward + backward of the `[4096, 256] x [256, 8192]`
    head: 423 ms compiled, 380 ms in place, best of 6, our 2-core machine).
    """
    x = logits.float()
    valid = (labels != IGNORE).to(torch.float32)[:, None]
    idx = labels.clamp_min(0)[:, None]
    m = x.amax(dim=1, keepdim=True)
    e = torch.exp(x - m)
    sumexp = e.sum(dim=1, keepdim=True)
    lse = m + sumexp.log()
    target = x.gather(1, idx)
    ce = ((lse - target) * valid).sum()
    z = (lse * lse * valid).sum()
    onehot = torch.arange(x.shape[1], device=x.device)[None, :] == idx
    g = e * (valid * (1.0 + 2.0 * z_loss * lse) / sumexp) - onehot * valid
    return g.to(logits.dtype), ce, z


@functools.cache
def _compiled_chunk():
    return torch.compile(chunk_loss_grad)  # static first, dynamic after a second shape (the last chunk)

