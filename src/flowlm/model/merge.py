"""Model soups: the weighted linear average of checkpoints of one architecture.

OLMo 3 souped its 32B midtraining ingredients, its last long-context checkpoints and its 32B Think
SFT runs at two learning rates by plain parameter averaging (report §f; mergekit `linear` with
`normalize: true`). `soup` does the same for any safetensors checkpoint directory: tensors are
accumulated in fp32 one checkpoint at a time (peak memory = the fp32 accumulator + one checkpoint) and
written in the first checkpoint's dtype, next to its `config.json`, tokenizer files and a
`flowlm.json` recording the ingredients.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from flowlm.atomic import atomic_dir
from flowlm.errors import ConfigError, FlowError
from flowlm.model.hf import FLOWLM_META, WEIGHTS, checkpoint_meta, load_state, read_json, write_json

# config.json keys that describe the saving run, not the architecture.
_VOLATILE_KEYS = {"transformers_version", "dtype", "torch_dtype", "_name_or_path", "architectures",
                  "bos_token_id", "eos_token_id", "pad_token_id", "use_cache"}
_SKIP_COPY = {WEIGHTS, "model.safetensors.index.json", "config.json", FLOWLM_META}


def _arch(path: Path) -> dict[str, Any]:
    cfg = read_json(path / "config.json")
    return {k: v for k, v in cfg.items() if k not in _VOLATILE_KEYS}


def _normalized(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ConfigError(f"soup: {len(weights)} weights for {n} checkpoints")
    total = float(sum(weights))
    if any(w < 0 for w in weights) or total <= 0:
        raise ConfigError(f"soup: weights must be non-negative with a positive sum, got {list(weights)}")
    return [float(w) / total for w in weights]


def _check_same(first: Path, other: Path, ref: dict[str, torch.Tensor],
                state: dict[str, torch.Tensor]) -> None:
    a, b = _arch(first), _arch(other)
    if a != b:
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise FlowError(f"{other / 'config.json'}: differs from {first / 'config.json'} in {', '.join(keys[:4])}")
    if set(ref) != set(state):
        extra = sorted(set(ref) ^ set(state))[:3]
        raise FlowError(f"{other / WEIGHTS}: tensor names differ from {first / WEIGHTS} ({', '.join(extra)})")
    for key, tensor in ref.items():
        if state[key].shape != tensor.shape:
            raise FlowError(f"{other / WEIGHTS}: {key} has shape {tuple(state[key].shape)}, "
                            f"{first / WEIGHTS} has {tuple(tensor.shape)}")


def soup(paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str],
         weights: Sequence[float] | None = None) -> Path:
    """Write `sum_i w_i * theta_i` (weights normalised to sum 1; uniform when None) to `out_dir`."""
    roots = [Path(p) for p in paths]
    if not roots:
        raise ConfigError("soup: no checkpoints given")
    coeffs = _normalized(weights, len(roots))
    first = load_state(roots[0])
    out_dtypes = {k: v.dtype for k, v in first.items()}
    acc = {k: v.to(torch.float32) * coeffs[0] for k, v in first.items()}
    for root, coeff in zip(roots[1:], coeffs[1:]):
        state = load_state(root)
        _check_same(roots[0], root, first, state)
        for key, tensor in state.items():
            acc[key].add_(tensor.to(torch.float32), alpha=coeff)
        del state
    merged = {k: v.to(out_dtypes[k]) if out_dtypes[k].is_floating_point else first[k] for k, v in acc.items()}
    meta_src = read_json(roots[0] / FLOWLM_META) if (roots[0] / FLOWLM_META).is_file() else {}
    with atomic_dir(out_dir) as tmp:
        save_file(merged, str(tmp / WEIGHTS), metadata={"format": "pt"})
        shutil.copy2(roots[0] / "config.json", tmp / "config.json")
        for item in roots[0].iterdir():  # tokenizer and generation files of the first ingredient
            if item.is_file() and item.name not in _SKIP_COPY and not item.name.endswith(".safetensors"):
                shutil.copy2(item, tmp / item.name)
        soup_meta = {"soup": {"ingredients": [str(r) for r in roots], "weights": coeffs}}
        write_json(tmp / FLOWLM_META, checkpoint_meta(meta_src.get("model_config"), soup_meta))
    return Path(out_dir)
