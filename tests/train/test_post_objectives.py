"""Post-training objectives in the engine: `sft`, `dpo`, `reward_model`, `distill` each train a tiny model a
few steps through `Trainer` (finite, decreasing loss; 1 vs 2 micro-batches give the same numbers; metrics
of the right kind), plus the DPO reference cache and the reward model's round trip to its verifier."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flowlm.data.loader import PackedLoader
from flowlm.data.pack import PackedDataset
from flowlm.data.pairs import PairDataset
from flowlm.data.store import TokenStore
from flowlm.errors import ConfigError, FlowError
from flowlm.model.config import ModelConfig
from flowlm.model.olmo3 import Olmo3
from flowlm.train.config import EngineConfig, OptimConfig, ScheduleConfig
from flowlm.train.engine import Callback, Trainer
from flowlm.train.objectives import build_objective
from flowlm.train.objectives.distill import DistillObjective
from flowlm.train.objectives.dpo import DPOObjective
from flowlm.train.objectives.reward_model import RewardModelObjective, pair_rewards
from flowlm.train.objectives.sft import SFTObjective
from flowlm.train.parallel import World
from flowlm.train.post_losses import generalized_jsd

V = 64
SMALL = dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
             max_seq_len=64, sliding_window=16)


def tiny_olmo(seed: int = 0) -> Olmo3:
    torch.manual_seed(seed)
    return Olmo3(ModelConfig.preset("tiny", **SMALL))


class Records(Callback):
    def __init__(self) -> None:
        self.records: list[dict] = []

    def on_step_end(self, trainer, step, record) -> None:
        self.records.append(dict(record))


def fit(model, objective, loader, out: Path, *, steps: int = 4, grad_accum: int = 1, batch_size: int = 4,
        lr: float = 1e-2) -> list[dict]:
    cfg = EngineConfig(steps=steps, seq_len=32, batch_size=batch_size, grad_accum=grad_accum, checkpoint_every=100,
                       keep_last=1, optim=OptimConfig(lr=lr), schedule=ScheduleConfig(kind="constant"))
    rec = Records()
    Trainer(model, objective, loader, cfg, out, callbacks=(rec,), show_progress=False).fit()
    return rec.records


def assert_same_records(a: list[dict], b: list[dict], keys: list[str]) -> None:
    """Step 1 equal to float rounding (1e-5); later steps within 1e-4, since the rounding differences of
    the two summation orders compound through the optimizer updates (measured up to 2e-5 by step 6).
    Values that are zero up to rounding (DPO's step-1 rewards: the policy is the reference) carry the
    rounding of the log-prob sums they come from, ~1e-7 to 1e-6 (2.4e-7 measured on an AVX-512 CPU),
    hence the absolute 1e-6."""
    for ra, rb in zip(a, b, strict=True):
        rel = 1e-5 if ra["step"] == 1 else 1e-4
        for k in ["loss", "grad_norm", *keys]:
            assert ra[k] == pytest.approx(rb[k], rel=rel, abs=1e-6), (ra["step"], k)


def write_pairs(root: Path, n: int = 16, seed: int = 0) -> Path:
    """Chosen answers follow a pattern (10, 11, ... mod 6), rejected ones are random high ids."""
    rng = np.random.default_rng(seed)
    sides: dict[str, tuple[list, list]] = {"chosen": ([], []), "rejected": ([], [])}
    for i in range(n):
        prompt = rng.integers(1, V, rng.integers(3, 7)).tolist()
        answers = {"chosen": [10 + (i + k) % 6 for k in range(rng.integers(3, 8))],
                   "rejected": rng.integers(30, V, rng.integers(3, 10)).tolist()}
        for side, ans in answers.items():
            sides[side][0].append(prompt + ans)
            sides[side][1].append([0] * len(prompt) + [1] * len(ans))
    for side, (docs, masks) in sides.items():
        TokenStore.write(root / side, docs, vocab_size=V, tokenizer_hash="synthetic", label_masks=masks,
                         meta={"pad_id": 0})
    return root


def write_chat_store(path: Path, n: int = 24, seed: int = 0) -> TokenStore:
    """Chat-like documents: a prompt (no labels), then an answer that repeats a short pattern."""
    rng = np.random.default_rng(seed)
    docs, masks = [], []
    for _ in range(n):
        prompt = rng.integers(1, V, rng.integers(3, 8)).tolist()
        start = int(rng.integers(1, V - 8))
        answer = [start + k % 4 for k in range(rng.integers(4, 12))]
        docs.append(prompt + answer)
        masks.append([0] * len(prompt) + [1] * len(answer))
    return TokenStore.write(path, docs, vocab_size=V, tokenizer_hash="synthetic", label_masks=masks)


def chat_loader(tmp_path: Path) -> PackedLoader:
    if not (tmp_path / "chat").exists():
        write_chat_store(tmp_path / "chat")
    return PackedLoader(PackedDataset(TokenStore.open(tmp_path / "chat"), 32, seed=0), 4, seed=0)


# -- sft ------------------------------------------------------------------------------------------

def test_sft_trains_and_accumulates_exactly(tmp_path):
    obj = build_objective({"name": "sft", "z_loss": 1e-4})
    assert isinstance(obj, SFTObjective) and obj.unit == "tokens"
    a = fit(tiny_olmo(), obj, chat_loader(tmp_path), tmp_path / "a")
    b = fit(tiny_olmo(), SFTObjective(z_loss=1e-4), chat_loader(tmp_path), tmp_path / "b", grad_accum=2)
    assert all(math.isfinite(r["loss"]) for r in a) and a[-1]["loss"] < a[0]["loss"]
    assert_same_records(a, b, ["z_loss", "assistant_tokens_per_seq", "sequences"])
    r = a[0]
    # a Mean over documents (tokens per assistant turn: 4..11 here), a Sum of documents, never per token
    assert 4 <= r["assistant_tokens_per_seq"] <= 11
    assert r["sequences"] == int(r["sequences"])
    assert r["loss_tokens"] == pytest.approx(r["assistant_tokens_per_seq"] * r["sequences"])


# -- dpo ------------------------------------------------------------------------------------------

def pair_data(tmp_path: Path, **kw) -> PairDataset:
    root = tmp_path / "pairs"
    if not root.exists():
        write_pairs(root, **kw)
    return PairDataset(root, max_len=32, with_index=True)


def dpo_run(tmp_path: Path, out: str, grad_accum: int, loss_type: str = "dpo_norm") -> list[dict]:
    ds = pair_data(tmp_path)
    model = tiny_olmo()
    obj = DPOObjective(beta=0.5, loss_type=loss_type)
    obj.precompute_reference(ds, tmp_path / "cache", model=model)
    return fit(model, obj, PackedLoader(ds, 4, seed=0), tmp_path / out, grad_accum=grad_accum)


@pytest.mark.parametrize("loss_type", ["dpo", "dpo_norm"])
def test_dpo_trains_from_cached_reference_and_accumulates_exactly(tmp_path, loss_type):
    a = dpo_run(tmp_path, "a", 1, loss_type)
    b = dpo_run(tmp_path, "b", 2, loss_type)
    metrics = ["reward_accuracy", "chosen_reward", "rejected_reward", "reward_margin", "chosen_logp", "rejected_logp"]
    assert_same_records(a, b, metrics)
    # step 1: the policy is the reference, so every reward is 0 and the loss is ln 2
    assert a[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert a[0]["reward_accuracy"] == 0.0 and a[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert all(math.isfinite(r["loss"]) for r in a) and a[-1]["loss"] < a[0]["loss"]
    for r in a:  # a Mean over pairs, not divided by tokens
        assert 0.0 <= r["reward_accuracy"] <= 1.0 and r["loss_pairs"] == 4
        assert r["reward_margin"] == pytest.approx(r["chosen_reward"] - r["rejected_reward"], abs=1e-5)
        assert r["chosen_logp"] < 0 and r["rejected_logp"] < 0
    assert a[-1]["reward_accuracy"] > 0.5 and a[-1]["reward_margin"] > 0


def test_dpo_reference_cache_is_keyed_by_reference_and_data(tmp_path):
    from flowlm.model.hf import save_pretrained

    ds = pair_data(tmp_path)
    model = tiny_olmo()
    obj = DPOObjective(beta=0.1, loss_type="dpo")
    path = obj.precompute_reference(ds, tmp_path / "cache", model=model)
    cached = torch.load(path, weights_only=True)
    assert cached["chosen"].shape == (len(ds),) and bool((cached["chosen"] < 0).all())
    # the same reference and data: read back, not recomputed (the file is untouched)
    mtime = path.stat().st_mtime_ns
    again = DPOObjective(beta=5.0, loss_type="dpo_norm")  # the loss type does not enter the key: sums are cached
    assert again.precompute_reference(ds, tmp_path / "cache", model=tiny_olmo()) == path
    assert path.stat().st_mtime_ns == mtime
    # the same weights as a checkpoint directory: the same numbers (a different key: files, not tensors)
    save_pretrained(model, None, tmp_path / "ref")
    from_dir = DPOObjective(beta=0.1, loss_type="dpo", reference=str(tmp_path / "ref"))
    other = from_dir.precompute_reference(ds, tmp_path / "cache")
    assert other != path
    torch.testing.assert_close(torch.load(other, weights_only=True)["chosen"], cached["chosen"], rtol=1e-5, atol=1e-5)
    # other data or another initial model: another key
    ds2 = PairDataset(write_pairs(tmp_path / "pairs2", seed=1), max_len=32, with_index=True)
    assert DPOObjective(beta=0.1).precompute_reference(ds2, tmp_path / "cache", model=model) != path
    assert DPOObjective(beta=0.1).precompute_reference(ds, tmp_path / "cache", model=tiny_olmo(seed=1)) != path


def test_dpo_refuses_what_would_silently_train_against_the_wrong_reference(tmp_path):
    ds = pair_data(tmp_path)
    loader = PackedLoader(ds, 4, seed=0)
    model = tiny_olmo()
    obj = DPOObjective(beta=0.1)
    with pytest.raises(FlowError, match="precompute_reference"):
        obj.loss(model, next(iter(loader)))
    obj.precompute_reference(ds, tmp_path / "cache", model=model)
    batch = next(iter(loader))
    with pytest.raises(FlowError, match="with_index=True"):
        obj.loss(model, {k: v for k, v in batch.items() if k != "pair_index"})
    # a resumed run whose cache key differs from its checkpoint's
    state = obj.state_dict()
    assert set(state) == {"reference_key"}
    resumed = DPOObjective(beta=0.1)
    resumed.load_state_dict({"reference_key": "0" * 20})
    with pytest.raises(FlowError, match="changed since the checkpoint"):
        resumed.precompute_reference(ds, tmp_path / "cache", model=model)
    # reference: null with a missing cache and a trained model
    obj2 = DPOObjective(beta=0.1)
    obj2.setup(model, World())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(FlowError, match="initial weights"):
        obj2.precompute_reference(ds, tmp_path / "other_cache")
    with pytest.raises(ValueError, match="beta"):
        build_objective({"name": "dpo"})  # β is required


# -- reward model ---------------------------------------------------------------------------------

WORDS = "what is two plus two three four five the answer sorry no idea maybe hello world".split()


@pytest.fixture(scope="module")
def word_tokenizer():
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                                eos_token="[EOS]")


def rm_pairs(tok, root: Path) -> list[tuple[str, str, str]]:
    """Rows rendered as the verifier renders them without a chat template: `prompt + "\\n\\n" + answer`."""
    rows = [("what is two plus two", "the answer is four", "maybe five"),
            ("what is two plus three", "the answer is five", "no idea sorry"),
            ("what is three plus two", "five", "hello world"),
            ("what is two plus two", "four", "three maybe")] * 2
    sides: dict[str, tuple[list, list]] = {"chosen": ([], []), "rejected": ([], [])}
    for prompt, good, bad in rows:
        n_prompt = len(tok(prompt)["input_ids"])
        for side, ans in (("chosen", good), ("rejected", bad)):
            ids = tok(f"{prompt}\n\n{ans}")["input_ids"]
            sides[side][0].append(ids)
            sides[side][1].append([0] * n_prompt + [1] * (len(ids) - n_prompt))
    for side, (docs, masks) in sides.items():
        TokenStore.write(root / side, docs, vocab_size=len(tok), tokenizer_hash="words", label_masks=masks,
                         meta={"pad_id": tok.pad_token_id})
    return rows


def tiny_rm(tok):
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64, num_labels=1,
                      pad_token_id=tok.pad_token_id)
    return Qwen3ForSequenceClassification(cfg)


def test_reward_model_trains_and_its_saved_dir_scores_in_the_verifier(tmp_path, word_tokenizer):
    from flowlm.verify import verify
    from flowlm.verify.reward_model import raw_rewards

    tok = word_tokenizer
    rows = rm_pairs(tok, tmp_path / "pairs")
    ds = PairDataset(tmp_path / "pairs", max_len=32)
    assert ds.pad_id == tok.pad_token_id
    obj = build_objective({"name": "reward_model", "center_coef": 0.01})
    assert isinstance(obj, RewardModelObjective) and obj.unit == "pairs"
    model = tiny_rm(tok)
    a = fit(model, obj, PackedLoader(ds, 4, seed=0), tmp_path / "a", steps=6)
    b = fit(tiny_rm(tok), RewardModelObjective(center_coef=0.01), PackedLoader(ds, 4, seed=0), tmp_path / "b",
            steps=6, grad_accum=2)
    assert_same_records(a, b, ["accuracy", "margin", "chosen_reward", "rejected_reward", "max_abs_reward"])
    assert all(math.isfinite(r["loss"]) for r in a) and a[-1]["loss"] < a[0]["loss"]
    for r in a:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["loss_pairs"] == 4
        assert r["margin"] == pytest.approx(r["chosen_reward"] - r["rejected_reward"], abs=1e-5)
    assert a[-1]["accuracy"] == 1.0

    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    prompts, good, bad = (list(x) for x in zip(*rows[:4]))
    try:
        rm = str(tmp_path / "rm")
        got_good, got_bad = raw_rewards(rm, prompts, good), raw_rewards(rm, prompts, bad)
        verdict = verify("reward_model", "<think>hmm</think>the answer is four", None, prompt=prompts[0],
                         reward_model=rm)
    finally:
        torch.set_grad_enabled(True)  # the verifier's loader turns gradients off process-wide
    # the verifier scores the saved model exactly as training saw it (same tokens, same pooled position)
    model.eval()
    with torch.no_grad():
        c, r = pair_rewards(model, ds.collate([ds[i] for i in range(4)]))
    np.testing.assert_allclose(got_good, c.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_bad, r.numpy(), rtol=1e-4, atol=1e-5)
    assert all(g > b for g, b in zip(got_good, got_bad))
    assert verdict.meta["raw_reward"] == pytest.approx(got_good[0], abs=1e-4) and 0 < verdict.score < 1


def test_reward_model_needs_a_one_label_classifier_with_a_pad_id(word_tokenizer):
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    cfg = Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, num_labels=1, pad_token_id=None)
    with pytest.raises(ConfigError, match="num_labels=1"):
        RewardModelObjective().setup(Qwen3ForSequenceClassification(cfg), None)


# -- distill --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(1)
    cfg = Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    out = tmp_path_factory.mktemp("teacher")
    teacher = Qwen3ForCausalLM(cfg)
    with torch.no_grad():  # a confident teacher: far from the near-uniform random student
        teacher.lm_head.weight.mul_(30.0)
    teacher.save_pretrained(out)
    return out


def test_distill_loss_equals_full_logits_divergence_and_grads(tmp_path, teacher_dir):
    student = tiny_olmo()
    obj = DistillObjective(teacher=str(teacher_dir), divergence="jsd", beta=0.3, temperature=2.0, top_k=16)
    obj.setup(student, World())
    teacher = obj.teacher
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    batch = next(iter(chat_loader(tmp_path)))
    obj.chunk_rows = 7  # several chunks
    out = obj.loss(student, batch)
    out.loss.backward()
    chunked = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)
    kw = {"position_ids": batch["position_ids"], "doc_ids": batch["doc_ids"]}
    with torch.no_grad():
        t_logits = teacher(batch["input_ids"], **kw)
    mask = batch["labels"] != -100
    full = generalized_jsd(student(batch["input_ids"], **kw), t_logits, 0.3, 2.0, labels_mask=mask, top_k=16).sum()
    full.backward()
    assert out.loss.item() == pytest.approx(full.item(), rel=1e-5)
    for n, p in student.named_parameters():
        torch.testing.assert_close(chunked[n], p.grad, rtol=1e-4, atol=1e-6)
    assert obj.count_units(batch) == int(mask.sum()) and out.metrics["teacher_agreement"].count == int(mask.sum())


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_distill_trains_and_accumulates_exactly(tmp_path, teacher_dir, divergence):
    model, obj = tiny_olmo(), DistillObjective(teacher=str(teacher_dir), divergence=divergence)
    batch = next(iter(chat_loader(tmp_path)))

    def per_token() -> float:  # on one fixed batch: successive training batches differ more than 4 steps improve
        with torch.no_grad():
            return obj.loss(model, batch).loss.item() / obj.count_units(batch)

    a = fit(model, obj, chat_loader(tmp_path), tmp_path / "a")
    assert all(math.isfinite(r["loss"]) for r in a)
    assert per_token() < a[0]["loss"]  # the first record is this batch before any step
    assert all(0.0 <= r["teacher_agreement"] <= 1.0 for r in a)
    if divergence == "jsd":
        b = fit(tiny_olmo(), DistillObjective(teacher=str(teacher_dir), divergence=divergence), chat_loader(tmp_path),
                tmp_path / "b", grad_accum=2)
        assert_same_records(a, b, ["teacher_agreement"])


def test_distill_config_is_checked():
    with pytest.raises(ValueError, match="beta applies to divergence: jsd only"):
        build_objective({"name": "distill", "teacher": "/t", "divergence": "reverse_kl", "beta": 0.3})
    with pytest.raises(ValueError, match="teacher"):
        build_objective({"name": "distill"})
    assert build_objective({"name": "distill", "teacher": "/t", "divergence": "reverse_kl"}).cfg.jsd_beta == 1.0
