"""The runner for other model families (`flowlm.generate.hf_runner`): a full-attention HF model (a tiny
Qwen3) decodes all live slots in one forward over a left-padded cache, and gives what transformers'
`generate` and the training forward give; a sliding-window model keeps one cache per slot."""

from __future__ import annotations

import pytest
import torch

from flowlm.generate.engine import Engine, GenerateConfig
from flowlm.generate.params import SamplingParams

from .conftest import micro_model

GREEDY = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True)
LENGTHS = (1, 5, 8, 9, 17, 33)


@pytest.fixture(scope="module")
def qwen():
    from tests.hf_models import tiny_qwen3

    return tiny_qwen3(128, layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2)


def _prompts(lengths=LENGTHS, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (n,), generator=g).tolist() for n in lengths]


def _hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                      eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("slots", [1, 2, 3, 16])
def test_batched_greedy_equals_transformers_generate(qwen, slots: int) -> None:
    """Prompts of 1-33 tokens join a batch whose rows are longer and shorter than theirs (both sides padded),
    and leave it while others run."""
    prompts = _prompts()
    engine = Engine(qwen, config=GenerateConfig(max_slots=slots))
    results = engine.generate(prompts, GREEDY)
    assert engine.runner.batched is True
    assert [r.completions[0].tokens for r in results] == [_hf_greedy(qwen, p, 24) for p in prompts]
    assert engine.runner.batch is None and engine.runner.pads == []  # every row released


def test_batched_sampling_logprobs_equal_the_training_forward(qwen) -> None:
    """n samples per prompt and lengths 1-30: slots finish at different steps, rows move and padding is cut."""
    engine = Engine(qwen, config=GenerateConfig(max_slots=4))
    prompts = _prompts()
    for i, (p, n) in enumerate(zip(prompts, (3, 20, 7, 12, 1, 30))):
        engine.submit(p, SamplingParams(temperature=1.0, max_new_tokens=n, ignore_eos=True, seed=i, n=2))
    results = list(engine.stream())
    assert len(results) == len(prompts)
    for r in results:
        prompt = prompts[r.request_id]
        for c in r.completions:
            seq = torch.tensor([prompt + c.tokens])
            with torch.no_grad():
                logp = torch.log_softmax(qwen(seq[:, :-1]).logits.float(), -1)[0, len(prompt) - 1:]
            ref = logp.gather(-1, seq[0, len(prompt):, None])[:, 0]
            assert (torch.tensor(c.logprobs) - ref).abs().max().item() < 1e-4


def test_batched_and_per_slot_decode_sample_the_same_tokens(qwen) -> None:
    prompts = _prompts((4, 11, 20, 2))
    params = [SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=n, ignore_eos=True, seed=i)
              for i, n in enumerate((9, 16, 5, 12))]
    batched = Engine(qwen, config=GenerateConfig(max_slots=3))
    per_slot = Engine(qwen, config=GenerateConfig(max_slots=3))
    per_slot.runner.batched = False
    a, b = batched.generate(prompts, params), per_slot.generate(prompts, params)
    assert [r.completions[0].tokens for r in a] == [r.completions[0].tokens for r in b]
    for x, y in zip(a, b):
        assert torch.allclose(torch.tensor(x.completions[0].logprobs), torch.tensor(y.completions[0].logprobs),
                              atol=1e-5)


def test_weights_swapped_mid_stream_keep_the_batch(qwen) -> None:
    engine = Engine(qwen, config=GenerateConfig(max_slots=4))
    for i, p in enumerate(_prompts((3, 9))):
        engine.submit(p, SamplingParams(max_new_tokens=12, ignore_eos=True, seed=i))
    engine.step()
    engine.step()
    new = {k: v * 0.5 for k, v in qwen.state_dict().items()}
    assert engine.update_weights(new) == 1
    done = list(engine.stream())
    assert all(r.num_generated == 12 for r in done)
    for r in done:
        versions = r.completions[0].versions
        assert versions[0] == 0 and versions[-1] == 1  # tokens after the swap carry the new version


def test_a_sliding_window_model_keeps_one_cache_per_slot() -> None:
    from transformers import AutoModelForCausalLM

    from flowlm.model.hf import save_pretrained

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_pretrained(micro_model(), None, d)
        hf = AutoModelForCausalLM.from_pretrained(d).eval()
    engine = Engine(hf, config=GenerateConfig(max_slots=2))
    prompts = _prompts((3, 12))
    results = engine.generate(prompts, GREEDY)
    assert engine.runner.batched is False
    assert [r.completions[0].tokens for r in results] == [_hf_greedy(hf, p, 24) for p in prompts]
