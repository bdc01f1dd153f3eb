"""vLLM backend: same interface as the native engine. The GPU tests skip without CUDA; on a CUDA machine
they need `pip install 'flowlm[vllm]'` (not part of `dev`: vllm brings its own CUDA torch)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from flowlm.errors import FlowError
from flowlm.generate.params import SamplingParams

from .conftest import micro_model

needs_gpu_vllm = pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
                                    reason="needs a CUDA GPU and the vllm package")


def test_missing_vllm_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flowlm.generate.vllm_backend import VLLMEngine

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, also where it is
    with pytest.raises(FlowError, match=r"needs the 'vllm' package: pip install 'flowlm\[vllm\]'") as info:
        VLLMEngine(tmp_path)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def gpu_ckpt(tok, tmp_path_factory: pytest.TempPathFactory):
    from flowlm.model.hf import save_pretrained

    model = micro_model(vocab_size=len(tok), max_seq_len=128)
    path = tmp_path_factory.mktemp("vllm") / "ckpt"
    save_pretrained(model, tok, path)
    return model, path


@needs_gpu_vllm
def test_vllm_greedy_and_logprobs_match_native(gpu_ckpt, tok) -> None:
    from flowlm.generate.engine import Engine
    from flowlm.generate.vllm_backend import VLLMEngine

    model, path = gpu_ckpt
    params = SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True)
    prompts = [[5, 6, 7], list(range(10, 30))]
    native = Engine(model, tok).generate(prompts, params)
    engine = VLLMEngine(path, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.3)
    got = engine.generate(prompts, params)
    for a, b in zip(native, got):
        assert a.completions[0].tokens == b.completions[0].tokens
        assert torch.allclose(torch.tensor(a.completions[0].logprobs), torch.tensor(b.completions[0].logprobs),
                              atol=1e-3)


@needs_gpu_vllm
def test_vllm_inflight_update_switches_versions(gpu_ckpt) -> None:
    from flowlm.generate.vllm_backend import VLLMEngine

    model, path = gpu_ckpt
    engine = VLLMEngine(path, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.3)
    rid = engine.submit([5, 6, 7], SamplingParams(temperature=0, max_new_tokens=40, ignore_eos=True))
    results = []
    while not any(len(c.tokens) for c in engine._live[str(rid)].completions):
        results += engine.step()
    engine.update_weights(micro_model(seed=1, vocab_size=model.cfg.vocab_size, max_seq_len=128).state_dict())
    results += list(engine.stream())
    c = results[0].completions[0]
    assert len(c.tokens) == 40 and c.versions[0] == 0 and c.versions[-1] == 1 and c.versions == sorted(c.versions)
