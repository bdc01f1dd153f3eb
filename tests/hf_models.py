"""Tiny Hugging Face models of another family than OLMo-3 (Qwen3), for tests of the paths flowlm takes for
a user's own checkpoint: the adapter, the HF rollout runner, chat templates without generation markers."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_qwen3(vocab_size: int, *, layers: int = 1, seed: int = 0, **config: Any) -> Any:
    """A randomly initialised Qwen3 (hidden 32, full attention) with `vocab_size` tokens, in eval mode."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    settings = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1,
                "head_dim": 16, "max_position_embeddings": 256, **config}
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab_size, num_hidden_layers=layers, **settings)).eval()


def save_tiny_qwen3(path: Path, tokenizer: Any, **kwargs: Any) -> Path:
    """A checkpoint directory as a user has one: `tiny_qwen3` for `tokenizer`, and the tokenizer's files."""
    tokenizer.save_pretrained(path)
    tiny_qwen3(len(tokenizer), **kwargs).save_pretrained(path)
    return path
