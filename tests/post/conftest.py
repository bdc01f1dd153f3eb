"""Shared fixtures of the post-training data tests: built-in prompt rows and a tiny chat tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowlm.post.procedural import builtin_rows


@pytest.fixture(scope="session")
def rows() -> list[dict]:
    """24 training-split built-in prompts (every task type), with verifier routing and worked solutions."""
    return builtin_rows(24, seed=0)


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flowlm.data import tasks
    from flowlm.model.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("post_tok")
    train_tokenizer([tasks.as_text(it) for it in tasks.generate(0, 300)], 400, out)
    return out


@pytest.fixture(scope="session")
def tok(tok_dir: Path):
    from flowlm.model.tokenizer import load_tokenizer

    return load_tokenizer(tok_dir)


@pytest.fixture(scope="session")
def tiny_model(tok):
    """A randomly initialised 2-layer Olmo3 over the tiny tokenizer (it says nonsense, quickly)."""
    import torch

    from flowlm.model.config import ModelConfig
    from flowlm.model.olmo3 import Olmo3

    torch.manual_seed(0)
    torch.set_num_threads(1)
    return Olmo3(ModelConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                             intermediate_size=64, max_seq_len=128, sliding_window=16)).eval()


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_model, tok, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flowlm.model.hf import save_pretrained

    return save_pretrained(tiny_model, tok, tmp_path_factory.mktemp("post_ckpt") / "model")
