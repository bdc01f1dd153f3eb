"""Engine exactness and scheduling: greedy == transformers `generate`, logprobs == training forward,
continuous batching frees slots at once, n samples share a prefill, bad requests fail alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from flowlm.errors import ConfigError
from flowlm.generate.engine import Engine, GenerateConfig
from flowlm.generate.params import SamplingParams
from flowlm.model.hf import save_pretrained
from flowlm.train.losses import token_logprobs

from .conftest import end_of_turn_model, micro_model

GREEDY = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True)
# Prompt lengths below, at and across the window (8), so decode starts with a partly and a fully
# wrapped ring buffer; 24 new tokens cross the window again during decode.
LENGTHS = (1, 5, 8, 9, 17, 33)


def _prompts(lengths=LENGTHS, vocab: int = 128, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    # An explicit mask: otherwise generate() treats prompt tokens equal to pad_token_id as padding.
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                      eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    model = micro_model()
    path = tmp_path_factory.mktemp("gen_ckpt") / "ckpt"
    save_pretrained(model, None, path)
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    return model, hf, path


@pytest.mark.parametrize("slots", [2, 16])
def test_greedy_matches_transformers_generate(exported, slots: int) -> None:
    model, hf, _ = exported
    prompts = _prompts()
    # 2 slots < 6 requests: requests join and leave the batch between decode steps.
    results = Engine(model, config=GenerateConfig(max_slots=slots)).generate(prompts, GREEDY)
    for prompt, res in zip(prompts, results):
        assert res.ok, res.error
        assert res.completions[0].tokens == _hf_greedy(hf, prompt, 24), len(prompt)
        assert res.completions[0].finish_reason == "length"


def test_hf_runner_matches_native_engine(exported) -> None:
    model, hf, _ = exported
    prompts = _prompts((3, 12))
    native = Engine(model, config=GenerateConfig(max_slots=4)).generate(prompts, GREEDY)
    via_hf = Engine(hf, config=GenerateConfig(max_slots=4)).generate(prompts, GREEDY)
    assert [r.completions[0].tokens for r in native] == [r.completions[0].tokens for r in via_hf]
    lp_native = torch.tensor(native[1].completions[0].logprobs)
    assert torch.allclose(lp_native, torch.tensor(via_hf[1].completions[0].logprobs), atol=1e-4)


def test_engine_over_the_hf_adapter_takes_the_adapters_weights(exported) -> None:
    """RL pushes the learner's state dict, which names an HF model's weights under the adapter's "hf."
    (`flowlm train --objective grpo --init <a Qwen3 checkpoint>` failed at its first sync until 2026-12-06)."""
    from flowlm.model.adapter import HFCausalLM

    _, _, path = exported
    adapter = HFCausalLM(AutoModelForCausalLM.from_pretrained(path).eval())  # what `load_causal_lm` gives a Qwen3
    engine = Engine(adapter, config=GenerateConfig(max_slots=2))
    prompts = _prompts((3, 12))
    before = [r.completions[0].tokens for r in engine.generate(prompts, GREEDY)]
    new = {k: torch.randn_like(v) * 0.5 if v.is_floating_point() else v for k, v in adapter.state_dict().items()}
    assert all(k.startswith("hf.") for k in new)
    assert engine.update_weights(new) == 1
    after = [r.completions[0].tokens for r in engine.generate(prompts, GREEDY)]
    adapter.load_state_dict(new)
    want = Engine(adapter.hf, config=GenerateConfig(max_slots=2)).generate(prompts, GREEDY)
    assert after == [r.completions[0].tokens for r in want] and after != before
    with pytest.raises(Exception, match="unknown keys"):
        engine.update_weights({**new, "hf.not_a_weight": torch.zeros(1)})


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, max_new_tokens=30, ignore_eos=True, seed=3),
    SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.02, max_new_tokens=30, ignore_eos=True, seed=4),
])
def test_sampled_logprobs_equal_training_forward(params: SamplingParams) -> None:
    model = micro_model()
    prompts = _prompts((4, 11, 20))
    results = Engine(model, config=GenerateConfig(max_slots=2)).generate(prompts, params)
    for prompt, res in zip(prompts, results):
        c = res.completions[0]
        seq = torch.tensor([prompt + c.tokens])
        with torch.no_grad():
            logits = model(seq[:, :-1])
        ref = token_logprobs(logits, seq[:, 1:])[0, len(prompt) - 1:]
        got = torch.tensor(c.logprobs)
        assert (got - ref).abs().max().item() < 1e-4
        assert c.versions == [0] * len(c.tokens)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.6, max_new_tokens=30, ignore_eos=True, seed=5),
    SamplingParams(temperature=1.4, top_p=0.9, max_new_tokens=30, ignore_eos=True, seed=6),
])
def test_tempered_logprobs_equal_the_training_forward_at_the_temperature(params: SamplingParams) -> None:
    """`GenerateConfig(logprobs="tempered")`: the same tokens as raw mode, each with the log-prob of the
    logits divided by the request's temperature (before top-p), as the RL learner computes it."""
    model = micro_model()
    prompts = _prompts((4, 11, 20))
    raw = Engine(model, config=GenerateConfig(max_slots=2)).generate(prompts, params)
    results = Engine(model, config=GenerateConfig(max_slots=2, logprobs="tempered")).generate(prompts, params)
    for prompt, res, base in zip(prompts, results, raw):
        c = res.completions[0]
        assert c.tokens == base.completions[0].tokens
        seq = torch.tensor([prompt + c.tokens])
        with torch.no_grad():
            logits = model(seq[:, :-1])
        ref = token_logprobs(logits / params.temperature, seq[:, 1:])[0, len(prompt) - 1:]
        assert (torch.tensor(c.logprobs) - ref).abs().max().item() < 1e-4
    with pytest.raises(ConfigError, match="logprobs must be one of raw, tempered"):
        GenerateConfig(logprobs="processed")


def test_slots_are_freed_at_once_and_no_idle_slot_is_computed() -> None:
    engine = Engine(micro_model(), config=GenerateConfig(max_slots=2))
    lengths = [3, 20, 5, 4]
    for i, n in enumerate(lengths):
        engine.submit([1 + i, 2, 3], SamplingParams(max_new_tokens=n, ignore_eos=True, seed=i))
    results = {r.request_id: r for r in engine.stream()}
    assert [results[i].num_generated for i in range(4)] == lengths
    # Requests 2 and 3 start (and finish) while the long request 1 is still running.
    assert results[2].timings.started < results[1].timings.finished
    assert results[3].timings.finished < results[1].timings.finished
    # One computed decode row per generated token beyond each completion's first (sampled from prefill).
    assert engine.stats["decode_slots"] == sum(lengths) - len(lengths)


def test_n_samples_share_one_prefill_and_seed_reproduces() -> None:
    model = micro_model()
    prompt = _prompts((10,))[0]
    params = SamplingParams(temperature=1.0, n=4, max_new_tokens=12, ignore_eos=True, seed=7)
    engine = Engine(model, config=GenerateConfig(max_slots=8))
    alone = engine.generate([prompt], params)[0]
    assert engine.stats["prefill_tokens"] == len(prompt)
    samples = [tuple(c.tokens) for c in alone.completions]
    assert len(set(samples)) > 1  # the n samples differ
    # Same seed in a different batch composition gives the same samples.
    other = SamplingParams(temperature=1.0, max_new_tokens=5, ignore_eos=True)
    mixed = Engine(model, config=GenerateConfig(max_slots=8)).generate(_prompts((3, 10, 6), seed=9)[:1] + [prompt],
                                                                       [other, params])[1]
    assert [tuple(c.tokens) for c in mixed.completions] == samples


def test_bad_requests_fail_alone() -> None:
    engine = Engine(micro_model(), config=GenerateConfig(max_slots=4))
    good = SamplingParams(max_new_tokens=4, ignore_eos=True)
    cases = [
        ([1, 2, 3], SamplingParams(top_p=2.0), "top_p"),
        ([1, 2, 3], SamplingParams(temperature=-1.0), "temperature"),
        ([1, 2, 3], SamplingParams(max_new_tokens=0), "max_new_tokens"),
        ([1, 2, 3], SamplingParams(top_k=-3), "top_k"),
        ([1, 2, 3], SamplingParams(n=0), "n must"),
        ([], good, "empty prompt"),
        (list(range(64)), good, "context is 64"),
        ([1, 999], good, "outside the vocabulary"),
        ("text without tokenizer", good, "needs a tokenizer"),
        ([1, 2, 3], good, None),
    ]
    ids = [engine.submit(p, sp) for p, sp, _ in cases]
    results = {r.request_id: r for r in engine.stream()}
    for rid, (_, _, expected) in zip(ids, cases):
        res = results[rid]
        if expected is None:
            assert res.ok and res.num_generated == 4
        else:
            assert not res.ok and expected in res.error and res.completions == []


def test_stop_token_and_context_limit() -> None:
    model = micro_model()
    engine = Engine(model, config=GenerateConfig(max_slots=2))
    ref = engine.generate([[5, 6, 7]], GREEDY)[0].completions[0].tokens
    stop_at = ref[5]
    first = ref.index(stop_at)
    res = engine.generate([[5, 6, 7]], SamplingParams(temperature=0, max_new_tokens=24,
                                                      stop_token_ids=(stop_at,)))[0].completions[0]
    assert res.finish_reason == "stop" and res.tokens == ref[:first + 1]
    # A 60-token prompt in a 64-token context: 4 tokens, then "length" although max_new_tokens is 24.
    long = engine.generate([list(range(60))], GREEDY)[0].completions[0]
    assert len(long.tokens) == 4 and long.finish_reason == "length"


def test_eos_stops_unless_ignored() -> None:
    model = micro_model()
    ref = Engine(model).generate([[9, 8]], GREEDY)[0].completions[0].tokens
    eos = ref[3]
    engine = Engine(model, eos_token_ids=[eos])
    stopped = engine.generate([[9, 8]], SamplingParams(temperature=0, max_new_tokens=24))[0].completions[0]
    assert stopped.tokens == ref[:ref.index(eos) + 1] and stopped.finish_reason == "stop"
    kept = engine.generate([[9, 8]], GREEDY)[0].completions[0]
    assert kept.tokens == ref


def test_text_and_chat_prompts_and_stop_strings(tok, tok_dir: Path) -> None:
    model = micro_model(vocab_size=len(tok))
    engine = Engine(model, tok, GenerateConfig(max_slots=4))
    from flowlm.model.tokenizer import render_chat

    msgs = [{"role": "user", "content": "What is 2+2?"}]
    chat_ids, _ = render_chat(tok, msgs, add_generation_prompt=True)
    greedy = SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True)
    a, b, c = engine.generate([msgs, chat_ids, "def f(x):"], greedy)
    assert a.prompt_ids == chat_ids and a.completions[0].tokens == b.completions[0].tokens
    assert c.prompt_ids == tok.encode("def f(x):", add_special_tokens=False)
    text = a.completions[0].text
    assert text == tok.decode(a.completions[0].tokens, skip_special_tokens=True)
    # Stop on a substring of the greedy text: generation ends there and the text is cut before it.
    assert len(text.strip()) >= 4
    stop = text.strip()[2:4]
    cut = engine.generate([msgs], SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True,
                                                  stop=(stop,)))[0].completions[0]
    assert cut.finish_reason == "stop" and stop not in cut.text and text.startswith(cut.text)
    assert len(cut.tokens) < len(a.completions[0].tokens)


def test_a_chat_reply_stops_at_the_end_of_turn_token(tok) -> None:
    """A chat prompt's completion ends at `<|im_end|>` (flowlm's EOS ends a document, not a turn), as a chat
    model's HF generation_config has it; text and token-id prompts run on past it. Until 2026-12-07 chat
    requests that did not list it themselves (`flowlm generate`, `rl filter`, on-policy distillation) ran
    past the end of the turn to `max_new_tokens`, and the verifier or the loss read what followed."""
    from flowlm.generate.prompts import ends_its_turn, to_prompt_ids

    model, im_end = end_of_turn_model(tok)
    chat = [{"role": "user", "content": "hi"}]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    ids = to_prompt_ids(chat, tok)
    out = Engine(model, tok).generate([chat, ids], [greedy, greedy])
    assert out[0].completions[0].tokens == [im_end] and out[0].completions[0].finish_reason == "stop"
    assert out[1].completions[0].tokens[0] == im_end and len(out[1].completions[0].tokens) == 6
    assert ends_its_turn(chat, SamplingParams(stop_token_ids=(7,)), tok).stop_token_ids == (7, im_end)
    assert ends_its_turn(chat, SamplingParams(stop_token_ids=(im_end,)), tok).stop_token_ids == (im_end,)
    assert ends_its_turn(chat, SamplingParams(ignore_eos=True), tok).stop_token_ids == ()
    assert ends_its_turn("hi", greedy, tok) is greedy and ends_its_turn(ids, greedy, tok) is greedy


def test_completion_text_keeps_think_and_tool_markup_a_tokenizer_calls_special(tok_dir: Path) -> None:
    """Some tokenizers declare `<think>` or `<tool_call>` special, and decoding with `skip_special_tokens`
    (vLLM's default, and this engine's until 2026-12-07) then drops the markup the verifiers and the tool loop
    parse. A completion's text leaves out the control tokens only (`decode_reply`)."""
    from flowlm.model.tokenizer import decode_reply, load_tokenizer

    mtok = load_tokenizer(tok_dir)
    mtok.add_special_tokens({"extra_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>", "</think>",
                                                      "<tool_call>", "</tool_call>"]})
    ids = mtok.encode("<think>\nhm\n</think>\n\n<tool_call>\n{}\n</tool_call><|im_end|>", add_special_tokens=False)
    assert "<think>" not in mtok.decode(ids, skip_special_tokens=True)  # the hazard
    assert decode_reply(mtok, ids) == "<think>\nhm\n</think>\n\n<tool_call>\n{}\n</tool_call>"
    assert decode_reply(mtok, ids, stop=("</think>",)) == "<think>\nhm\n"
    out = Engine(micro_model(vocab_size=len(mtok)), mtok).generate(
        ["<think>"], SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True))[0].completions[0]
    assert out.text == decode_reply(mtok, out.tokens)
