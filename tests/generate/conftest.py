"""Shared tiny fixtures for the generation tests: a micro Olmo3 (GQA, window 8), its HF export, a tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowlm.model.config import ModelConfig
from flowlm.model.olmo3 import Olmo3


def micro_config(**overrides) -> ModelConfig:
    """4 layers (S, S, S, F), GQA 4 q / 2 kv heads, window 8, context 64."""
    base = dict(vocab_size=128, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
                intermediate_size=96, max_seq_len=64, sliding_window=8)
    base.update(overrides)
    return ModelConfig(**base)


def micro_model(seed: int = 0, **overrides) -> Olmo3:
    torch.manual_seed(seed)
    # A larger init spreads the logits so greedy/argmax comparisons are not decided by float noise.
    return Olmo3(micro_config(init_std=0.2, **overrides)).eval()


def end_of_turn_model(tok) -> tuple[Olmo3, int]:
    """A micro model whose greedy reply to a chat "hi" is the end-of-turn token at once; and that token's id.
    (Its lm_head row becomes 4x the row of the token the model chose first.)"""
    from flowlm.generate.engine import Engine
    from flowlm.generate.params import SamplingParams
    from flowlm.model.tokenizer import turn_end_ids

    (im_end,) = turn_end_ids(tok)
    model = micro_model(vocab_size=len(tok))
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    first = Engine(model, tok).generate([[{"role": "user", "content": "hi"}]], [greedy])[0].completions[0].tokens[0]
    with torch.no_grad():  # the end-of-turn token becomes the greedy choice wherever `first` was
        model.lm_head.weight[im_end] = 4 * model.lm_head.weight[first]
    return model, im_end


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)
    # Micro shapes gain nothing from a second thread, and on the shared 2-core machine OpenMP spin-waiting
    # behind other processes made the suite several times slower (measured: 44 s vs 0.9 s for one greedy-parity test).
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flowlm.data import builtin
    from flowlm.model.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("gen_tok")
    train_tokenizer([d["text"] for d in builtin.pretrain_docs(0, 60_000)], 400, out)
    return out


@pytest.fixture(scope="session")
def tok(tok_dir: Path):
    from flowlm.model.tokenizer import load_tokenizer

    return load_tokenizer(tok_dir)
