"""Bradley–Terry reward-model hook with a tiny random Llama sequence classifier built in tmp_path."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.slow  # importing torch + transformers dominates (~20 s on 2 cores)

from flowlm.verify import verify
from flowlm.verify.reward_model import load_reward_model, normalise, raw_rewards


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory) -> str:
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    out = tmp_path_factory.mktemp("rm")
    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["what is two plus two", "four", "five", "the answer is four", "hello world", "<think> </think>"]
    tk.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                                   pad_token_id=tok.pad_token_id, max_position_embeddings=128)
    model = transformers.LlamaForSequenceClassification(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_reward_model_scores_are_sigmoid_of_raw_reward(tiny_rm):
    v = verify("reward_model", "<think>x</think>the answer is four", None, prompt="what is two plus two",
               reward_model=tiny_rm)
    r = v.meta["raw_reward"]
    assert v.score == pytest.approx(1 / (1 + math.exp(-r)))
    assert 0.0 < v.score < 1.0
    # deterministic and batch-consistent
    batch = raw_rewards(tiny_rm, ["what is two plus two"] * 2, ["the answer is four", "five"])
    assert batch[0] == pytest.approx(r, abs=1e-5) and batch[0] != batch[1]


def test_normalisations_and_errors(tiny_rm):
    v = verify("reward_model", "five", None, reward_model=tiny_rm, rm_norm="minmax", rm_min=-1, rm_max=1)
    assert v.score == pytest.approx(min(1, max(0, (v.meta["raw_reward"] + 1) / 2)))
    assert normalise(3.0, "clip") == 1.0 and normalise(-1000, "sigmoid") == pytest.approx(0.0)
    assert verify("reward_model", "five", None).reason.startswith("error: bad ground truth")
    assert verify("reward_model", "five", None, reward_model="/nonexistent/rm").score == 0.0



def test_loading_a_reward_model_leaves_the_process_grad_mode_alone(tiny_rm):
    """Scoring with the reward-model verifier must not switch off autograd for training in the same process."""
    import torch

    load_reward_model.cache_clear()
    raw_rewards(tiny_rm, ["what is two plus two"], ["four"])
    assert torch.is_grad_enabled()


def test_flowlm_verify_with_a_reward_model_keeps_stderr_free_of_transformers_progress_bars(tiny_rm, tmp_path):
    """The CLI prints verdicts on stdout and nothing on stderr for a clean run: transformers' per-load
    "Loading weights" bar (one line per reward model loaded) is switched off, and switched back on after."""
    import json

    from transformers.utils import logging as hf_logging

    from tests.test_cli_verbs import run_flowlm

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "what is two plus two", "completion": "four", "dataset": "reward_model",
                                "reward_model": tiny_rm}) + "\n")
    r = run_flowlm("verify", "--file", str(rows))
    assert r.returncode == 0 and json.loads(r.stdout)["reason"].startswith("reward model r=")
    assert "Loading weights" not in r.stderr, r.stderr[-500:]
    load_reward_model.cache_clear()
    raw_rewards(tiny_rm, ["what is two plus two"], ["four"])
    assert hf_logging.is_progress_bar_enabled()


def test_a_messages_row_is_scored_with_its_question(tiny_rm):
    """RL rows carry their prompt as `messages`. The verifier read only a `prompt` string, so until
    2026-12-07 the reward model scored every such answer after an empty question."""
    answer = "<think>x</think>the answer is four"
    with_prompt = verify("reward_model", answer, None, prompt="what is two plus two", reward_model=tiny_rm)
    msgs = [{"role": "user", "content": "what is two plus two"}]
    with_messages = verify("reward_model", answer, None, messages=msgs, reward_model=tiny_rm)
    without = verify("reward_model", answer, None, reward_model=tiny_rm)
    assert with_messages.meta["raw_reward"] == pytest.approx(with_prompt.meta["raw_reward"], abs=1e-6)
    assert without.meta["raw_reward"] != pytest.approx(with_prompt.meta["raw_reward"], abs=1e-4)
    # a multi-turn prompt is scored as the whole conversation before the answer
    turns = [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "five"}, *msgs]
    multi = verify("reward_model", answer, None, messages=turns, reward_model=tiny_rm)
    assert multi.meta["raw_reward"] == pytest.approx(raw_rewards(tiny_rm, [turns], ["the answer is four"])[0], abs=1e-6)
