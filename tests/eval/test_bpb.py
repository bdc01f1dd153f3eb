"""BPB scoring: packed segments score as if alone; scoring only gold positions equals full logits."""

import math

import torch
from torch import nn

from flowlm.eval.bpb import Scored, score_segments
from flowlm.model.config import ModelConfig
from flowlm.model.olmo3 import Olmo3


def _model() -> Olmo3:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2,
                      intermediate_size=48, max_seq_len=32, sliding_window=8)
    return Olmo3(cfg).eval()


class _LogitsOnly(nn.Module):
    """The same model seen through its logits only (no `lm_head`, no `return_hidden`)."""

    def __init__(self, inner: Olmo3) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, ids, *, position_ids=None, doc_ids=None):
        return self.inner(ids, position_ids=position_ids, doc_ids=doc_ids)


def _segments() -> list[Scored]:
    g = torch.Generator().manual_seed(1)
    segs = []
    for n, n_cont in ((9, 3), (5, 4), (12, 1), (7, 6), (4, 2)):
        segs.append(Scored(torch.randint(0, 64, (n,), generator=g).tolist(), n_cont, 10))
    return segs


def test_gold_only_projection_equals_full_logits() -> None:
    model, segs = _model(), _segments()
    fast = score_segments(model, segs, row_len=16, rows_per_batch=2, pad_id=0, device=torch.device("cpu"))
    full = score_segments(_LogitsOnly(model), segs, row_len=16, rows_per_batch=2, pad_id=0, device=torch.device("cpu"))
    for (a, n), (b, m) in zip(fast, full):
        assert n == m
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5)


def test_packed_segment_scores_as_if_alone() -> None:
    model, segs = _model(), _segments()
    packed = score_segments(model, segs, row_len=16, rows_per_batch=4, pad_id=0, device=torch.device("cpu"))
    for seg, (lp, n) in zip(segs, packed):
        ids = torch.tensor([seg.ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0].float(), -1)
        gold = sum(float(logp[p - 1, seg.ids[p]]) for p in range(len(seg.ids) - seg.n_cont, len(seg.ids)))
        assert n == seg.n_cont
        assert math.isclose(lp, gold, rel_tol=1e-4, abs_tol=1e-4)
