"""The runner for other model families (`flowlm.generate.hf_runner`): a full-attention HF model (a tiny
Qwen3) decodes all live slots in one forward over a left-padded cache, and gives what transformers'
`generate` and the training forward give; so does a hybrid sliding-window model (transformers' OLMo-3),
batched through a full cache."""

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


def assert_training_logprobs(hf, prompt: list[int], completions) -> None:
    """Each completion's recorded log-probs equal the full (training) forward's, to 1e-4."""
    for c in completions:
        seq = torch.tensor([prompt + c.tokens])
        with torch.no_grad():
            logp = torch.log_softmax(hf(seq[:, :-1]).logits.float(), -1)[0, len(prompt) - 1:]
        ref = logp.gather(-1, seq[0, len(prompt):, None])[:, 0]
        assert (torch.tensor(c.logprobs) - ref).abs().max().item() < 1e-4


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
        assert_training_logprobs(qwen, prompts[r.request_id], r.completions)


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


@pytest.fixture(scope="module")
def hf_olmo3():
    """transformers' `Olmo3ForCausalLM` of the micro model: layers S, S, S, F with an 8-token window."""
    import tempfile

    from transformers import AutoModelForCausalLM

    from flowlm.model.hf import save_pretrained

    with tempfile.TemporaryDirectory() as d:
        save_pretrained(micro_model(), None, d)
        return AutoModelForCausalLM.from_pretrained(d).eval()


@pytest.mark.parametrize("slots", [1, 3, 16])
def test_a_sliding_window_model_decodes_all_slots_in_one_batch(hf_olmo3, slots: int) -> None:
    """A hybrid sliding-window model (its own cache keeps the last 8 keys of the sliding layers) is batched
    through a full cache; prompts of 1-33 tokens and 24 new ones run far past the window, and greedy
    decoding gives what transformers' `generate` (with the model's own sliding cache) gives."""
    prompts = _prompts()
    engine = Engine(hf_olmo3, config=GenerateConfig(max_slots=slots))
    results = engine.generate(prompts, GREEDY)
    assert engine.runner.batched is True and engine.runner.full_cache is True
    assert [r.completions[0].tokens for r in results] == [_hf_greedy(hf_olmo3, p, 24) for p in prompts]
    assert engine.runner.batch is None and engine.runner.pads == []


def test_a_sliding_window_model_samples_the_training_forwards_logprobs(hf_olmo3) -> None:
    """Batched sampling past the window: each token's log-prob equals the full forward's (whose sliding
    mask is the model's own), and the per-slot path (the model's own cache) samples the same tokens."""
    prompts = _prompts()
    lengths = (3, 20, 7, 12, 1, 30)

    def sample(per_slot: bool):
        engine = Engine(hf_olmo3, config=GenerateConfig(max_slots=4))
        if per_slot:
            engine.runner.batched = False
        for i, (p, n) in enumerate(zip(prompts, lengths)):
            engine.submit(p, SamplingParams(temperature=1.0, max_new_tokens=n, ignore_eos=True, seed=i, n=2))
        return sorted(engine.stream(), key=lambda r: r.request_id)

    batched, per_slot = sample(False), sample(True)
    for r, q in zip(batched, per_slot):
        assert [c.tokens for c in r.completions] == [c.tokens for c in q.completions]
        assert_training_logprobs(hf_olmo3, prompts[r.request_id], r.completions)


def test_an_unknown_cache_kind_keeps_one_cache_per_slot() -> None:
    """A cache that is not a `DynamicCache` of plain or sliding layers (quantized, linear-attention hybrids)
    is never batched: `_cache_kind` says so, and such a runner decodes slot by slot."""
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    from flowlm.generate.hf_runner import _cache_kind

    def cache(*layers):
        c = DynamicCache()
        c.layers = list(layers)
        return c

    assert _cache_kind(cache(DynamicLayer(), DynamicLayer())) == "full"
    assert _cache_kind(cache(DynamicSlidingWindowLayer(8), DynamicLayer())) == "sliding"
    assert _cache_kind(cache(DynamicLayer(), object())) == "per_slot"

    class OwnCache(DynamicCache):  # a model's own subclass: kept whole when full, never swapped for a plain one
        pass

    own = OwnCache()
    own.layers = [DynamicLayer()]
    assert _cache_kind(own) == "full"
    own.layers = [DynamicSlidingWindowLayer(8), DynamicLayer()]
    assert _cache_kind(own) == "per_slot"
    assert _cache_kind(cache()) == "per_slot" and _cache_kind(None) == "per_slot"
