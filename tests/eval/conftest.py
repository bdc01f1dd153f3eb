"""Shared fixtures for the eval tests: the real-data folder and a micro checkpoint that has half-learned
the built-in held-out answers (so greedy answers are a mix of right and wrong, and scores carry signal)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
TRAIN_STEPS = 50  # measured: answer-token loss ~0.7 -> greedy gets roughly a third to a half right


def data_dir(name: str) -> Path:
    """`shared/data/<name>` beside the repo, or skip when the shared checkout is absent."""
    d = (DATA / name).resolve()
    if not d.is_dir():
        pytest.skip(f"../shared/data/{name} (the shared/ checkout beside the repo) not found")
    return d


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)  # micro shapes gain nothing from a second thread on the shared machine


def qa_text(question: str, answer: str) -> str:
    return f"Question: {question}\nAnswer: \\boxed{{{answer}}}"


@pytest.fixture(scope="session")
def micro_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Olmo3 trained briefly on `Question: q\\nAnswer: \\boxed{a}` for 120 held-out built-in items."""
    from flowlm.data import builtin
    from flowlm.eval.suites import load_suite
    from flowlm.model.config import ModelConfig
    from flowlm.model.hf import save_pretrained
    from flowlm.model.olmo3 import Olmo3
    from flowlm.model.tokenizer import train_tokenizer

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("eval_ckpt")
    items = load_suite("builtin", n=120).items
    texts = [qa_text(it.question, it.row["ground_truth"]) for it in items]
    tok = train_tokenizer([d["text"] for d in builtin.pretrain_docs(0, 40_000)] + texts, 512, out / "tok")
    seqs = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in texts]
    heads = [len(tok.encode(t.split("\nAnswer:")[0] + "\nAnswer:", add_special_tokens=False)) for t in texts]
    length = max(map(len, seqs))
    x = torch.full((len(seqs), length), tok.pad_token_id)
    y = torch.full((len(seqs), length), -100)
    for i, (s, h) in enumerate(zip(seqs, heads)):
        x[i, : len(s)] = torch.tensor(s)
        y[i, h - 1 : len(s) - 1] = torch.tensor(s[h:])  # loss on the answer only
    torch.manual_seed(0)
    model = Olmo3(ModelConfig(vocab_size=len(tok), hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                              intermediate_size=128, max_seq_len=192, sliding_window=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(TRAIN_STEPS):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_pretrained(model.eval(), tok, out / "model")
