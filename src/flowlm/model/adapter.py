"""Load any local causal-LM checkpoint behind the `Olmo3.forward` signature.

Olmo3 checkpoints (flowlm or HF) come back as the native `Olmo3`. Anything else that
`AutoModelForCausalLM` reads (Qwen3, Llama, ...) is wrapped in `HFCausalLM`, which turns `doc_ids`
into a 4-D block-diagonal causal mask — transformers 5.x passes a 4-D `attention_mask` through
unchanged (`masking_utils._preprocess_mask_arguments`) — so packed batches work the same way for
every model the post-training stages touch. Nothing is downloaded: paths must be local.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowlm.atomic import atomic_dir
from flowlm.errors import FlowError
from flowlm.model.hf import FLOWLM_META, checkpoint_meta, load_native, read_json, save_pretrained, write_json
from flowlm.model.olmo3 import Olmo3, build_mask
from flowlm.train.losses import fused_linear_cross_entropy, lm_loss_sum


class HFCausalLM(nn.Module):
    """A transformers causal LM with `forward(input_ids, *, position_ids, doc_ids, return_hidden)`.

    `hf` is the wrapped `PreTrainedModel`; `lm_head` its output projection, so callers that take
    `return_hidden=True` project exactly as with `Olmo3`. Windowed (sliding) layers of the wrapped
    model see the doc mask only: pass models whose packed use needs no window, or no `doc_ids`.
    """

    # Checkpoints written by the training engine drop this prefix so they stay HF model directories.
    checkpoint_prefix = "hf."
    supports_fused_loss = True  # forward(..., labels=) returns (loss_sum, z_sum, n_tokens)

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    @classmethod
    def from_config(cls, config: Any) -> "HFCausalLM":
        """The same architecture with fresh weights, from a transformers config (a rollout worker's copy
        of the policy, which then loads the learner's weights)."""
        from transformers import AutoModelForCausalLM

        return cls(AutoModelForCausalLM.from_config(config, attn_implementation="sdpa"))

    @property
    def lm_head(self) -> nn.Module:
        """The wrapped model's output embedding (logits = lm_head(hidden))."""
        return self.hf.get_output_embeddings()

    @property
    def config(self) -> Any:
        """The wrapped model's transformers config."""
        return self.hf.config

    def _mask(self, doc_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        mask = build_mask(doc_ids.shape[1], doc_ids=doc_ids)
        if getattr(self.hf.config, "_attn_implementation", "sdpa") == "sdpa":
            return mask  # boolean, True = attend
        # eager and friends add the mask to the scores
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min)

    def forward(self, input_ids: torch.Tensor, *, position_ids: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None, return_hidden: bool = False,
                labels: torch.Tensor | None = None, z_loss: float = 0.0, head: Any = None):
        """Logits `[B, T, V]` (or final hidden states `[B, T, D]`), same contract as `Olmo3.forward`
        (`head`: `head(hidden, lm_head.weight)` inside `forward`, for a bias-free head).

        With `labels` it returns `(loss_sum, z_sum, n_tokens)` through the chunked LM head + loss
        (`flowlm.train.losses.fused_linear_cross_entropy`), as `Olmo3` does.
        """
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)
        if position_ids.dim() == 1:
            position_ids = position_ids.expand(B, T)
        kwargs: dict[str, Any] = {"position_ids": position_ids, "use_cache": False}
        if doc_ids is not None:
            kwargs["attention_mask"] = self._mask(doc_ids, self.hf.get_input_embeddings().weight.dtype)
        if return_hidden or labels is not None or head is not None:
            base = getattr(self.hf, self.hf.base_model_prefix)
            hidden = base(input_ids=input_ids, **kwargs).last_hidden_state
            if head is not None:
                return head(hidden, self.lm_head.weight)
            if labels is None:
                return hidden
            head = self.lm_head
            if getattr(head, "bias", None) is not None:  # the chunked loss takes a bias-free head
                return lm_loss_sum(head(hidden), labels, z_loss)
            return fused_linear_cross_entropy(hidden, head.weight, labels, z_loss)
        return self.hf(input_ids=input_ids, **kwargs).logits


def _model_type(path: Path) -> str:
    if not path.is_dir():
        raise FlowError(f"{path}: not a checkpoint directory")
    return str(read_json(path / "config.json").get("model_type", ""))


@contextlib.contextmanager
def quiet_hf_loading() -> Iterator[None]:
    """transformers' "Loading weights" progress bar off inside the block: a flowlm verb that loads a model
    prints its own progress, and the bar is noise on stderr (a line per model loaded, e.g. the reward model
    of `flowlm verify`). Restored afterwards."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_causal_lm(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = None) -> nn.Module:
    """Native `Olmo3` for Olmo3 checkpoints, else `HFCausalLM` around `AutoModelForCausalLM`."""
    root = Path(path)
    if _model_type(root) == "olmo3":
        return load_native(root, device=device, dtype=dtype)[0]
    from transformers import AutoModelForCausalLM

    try:
        with quiet_hf_loading():
            hf = AutoModelForCausalLM.from_pretrained(root, dtype=dtype or "auto", attn_implementation="sdpa",
                                                      local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FlowError(f"{root}: cannot load as a causal LM ({reason})") from None
    return HFCausalLM(hf.to(device))


def save(model: nn.Module, out_dir: str | os.PathLike[str], tokenizer: Any = None,
         extra_meta: dict[str, Any] | None = None) -> Path:
    """Save a native or adapted model as an HF checkpoint (atomic; `flowlm.json` holds `extra_meta`)."""
    if isinstance(model, Olmo3):
        return save_pretrained(model, tokenizer, out_dir, extra_meta)
    if not isinstance(model, HFCausalLM):
        raise FlowError(f"{out_dir}: cannot save a {type(model).__name__} (expected Olmo3 or HFCausalLM)")
    with atomic_dir(out_dir) as tmp:
        model.hf.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / FLOWLM_META, checkpoint_meta(None, extra_meta))
    return Path(out_dir)
