"""Bradley–Terry reward-model verifier: score with a trained sequence-classification checkpoint.

The checkpoint is a local Hugging Face `AutoModelForSequenceClassification` directory with
`num_labels=1` (what reward-model training saves). The input is the row's prompt conversation (`messages`
up to the last user turn, or a `prompt` string as the user turn) and the answer after `</think>` as the
assistant turn, rendered with the tokenizer's chat template when it has one, else the turns' text and
the answer joined by blank lines. The scalar reward r is mapped to [0, 1] by `rm_norm`:
`sigmoid` (default; σ(r) is the BT probability of beating a reward-0 response), `minmax`
(with `rm_min`/`rm_max`) or `clip` (r clipped to [0, 1]). Models are loaded once per process.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from flowlm.verify.base import GroundTruthError, Verdict, register
from flowlm.verify.rows import prompt_turns
from flowlm.verify.thinking import extract_answer


@functools.lru_cache(maxsize=4)
def load_reward_model(path: str) -> tuple[Any, Any]:
    """(model, tokenizer) from a local directory; refuses anything but a 1-label classifier."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from flowlm.model.adapter import quiet_hf_loading

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    with quiet_hf_loading():
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    if model.config.num_labels != 1:
        raise GroundTruthError(f"{path}: reward model must have num_labels=1, has {model.config.num_labels}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id  # needed to find the last token of each row
    model.eval().requires_grad_(False)  # scoring only; the process's grad mode is left alone
    return model, tok


def _render(tok: Any, prompt: str | list[dict[str, Any]], answer: str) -> str:
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template([*turns, {"role": "assistant", "content": answer}], tokenize=False)
    text = "\n\n".join(str(m.get("content") or "") for m in turns)
    return f"{text}\n\n{answer}" if text else answer


def raw_rewards(path: str, prompts: list[str] | list[list[dict[str, Any]]], answers: list[str],
                max_length: int = 4096) -> list[float]:
    """Scalar rewards for a batch of (prompt, answer) pairs; a prompt is a user turn's text or the
    conversation (messages) the answer follows."""
    import torch

    model, tok = load_reward_model(path)
    texts = [_render(tok, p, a) for p, a in zip(prompts, answers)]
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    with torch.no_grad():
        logits = model(**enc).logits
    return [float(x) for x in logits[:, 0]]


def normalise(r: float, how: str = "sigmoid", lo: float = -5.0, hi: float = 5.0) -> float:
    """Map a raw reward to [0, 1]."""
    if how == "sigmoid":
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, r))))
    if how == "minmax":
        return min(1.0, max(0.0, (r - lo) / (hi - lo)))
    if how == "clip":
        return min(1.0, max(0.0, r))
    raise GroundTruthError(f"rm_norm must be sigmoid, minmax or clip, got {how!r}")


@register("reward_model", "bt_reward_model")
def verify_with_reward_model(completion: str, ground_truth: Any, **row: Any) -> Verdict:
    """Score with the checkpoint at `row["reward_model"]` (or the ground truth when it is a path)."""
    path = row.get("reward_model") or ground_truth
    if not isinstance(path, str) or not path:
        raise GroundTruthError("reward_model verifier needs a checkpoint path (row key `reward_model`)")
    answer = extract_answer(completion)
    if not answer:
        return Verdict(0.0, "empty answer")
    r = raw_rewards(path, [prompt_turns(row)], [answer])[0]
    score = normalise(r, row.get("rm_norm", "sigmoid"), float(row.get("rm_min", -5.0)), float(row.get("rm_max", 5.0)))
    return Verdict(score, f"reward model r={r:.4f}", {"raw_reward": r})
