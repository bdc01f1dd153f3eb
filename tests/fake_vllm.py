"""A CPU stand-in for the `vllm` package, for testing `flowlm.generate.vllm_backend` where vLLM cannot run.

It implements only the calls `VLLMEngine` makes (`LLM`, its `llm_engine.add_request` / `step`,
`collective_rpc`, `reset_prefix_cache`, `SamplingParams`) over flowlm's native engine, with the vLLM rules
the backend depends on:
- `step()` returns cumulative outputs of every running request (all tokens so far, per sample);
- weights enter through `collective_rpc(fn, args=(named_tensors,))` and a worker's
  `model_runner.model.load_weights(weights=...)`, with HF parameter names (a wrong name fails);
- the prefix cache is keyed by (`cache_salt`, prompt): a request whose key was cached before is a hit;
- `reset_prefix_cache()` returns False while any request still runs (its blocks are held), else clears
  the cache and returns True.

Install with `monkeypatch.setitem(sys.modules, "vllm", fake_vllm)`. This checks flowlm's side of the
contract; the real vLLM is exercised by `tests/generate/test_vllm.py` on a CUDA machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from flowlm.generate.engine import Engine, GenerateConfig
from flowlm.generate.params import FINISH_LENGTH
from flowlm.generate.params import SamplingParams as NativeParams

INSTANCES: list["LLM"] = []  # every LLM built, newest last (tests inspect them)


class SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]]
    text: str
    finish_reason: str | None


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]
    finished: bool


@dataclass
class _Cache:
    keys: set[tuple[str | None, tuple[int, ...]]] = field(default_factory=set)
    hits: list[tuple[str | None, tuple[int, ...]]] = field(default_factory=list)
    salts: list[str | None] = field(default_factory=list)  # the salt of every request, in order
    resets: list[bool] = field(default_factory=list)


class _Worker:
    def __init__(self, engine: Engine) -> None:
        self.model_runner = SimpleNamespace(model=SimpleNamespace(load_weights=self._load))
        self.engine = engine
        self.loads = 0

    def _load(self, weights: Any) -> None:
        self.engine.update_weights(dict(weights), strict=True)  # every name must be the model's
        self.loads += 1


class LLMEngine:
    def __init__(self, native: Engine, max_model_len: int, vocab_size: int) -> None:
        self.native = native
        self.model_config = SimpleNamespace(max_model_len=max_model_len, get_vocab_size=lambda: vocab_size)
        self.cache = _Cache()
        self._ids: dict[int, str] = {}  # native request id -> vLLM request id

    def add_request(self, request_id: str, prompt: dict[str, Any], params: SamplingParams) -> None:
        ids, salt = list(prompt["prompt_token_ids"]), prompt.get("cache_salt")
        key = (salt, tuple(ids))
        if key in self.cache.keys:
            self.cache.hits.append(key)
        self.cache.keys.add(key)
        self.cache.salts.append(salt)
        k = params.kwargs
        native = NativeParams(n=k["n"], temperature=k["temperature"], top_p=k["top_p"],
                              top_k=max(k["top_k"], 0), min_p=k["min_p"], max_new_tokens=k["max_tokens"],
                              stop=tuple(k["stop"] or ()), stop_token_ids=tuple(k["stop_token_ids"] or ()),
                              ignore_eos=k["ignore_eos"], seed=k["seed"])
        self._ids[self.native.submit(ids, native)] = request_id

    def step(self) -> list[RequestOutput]:
        finished = self.native.step()
        live = {id(s.state.result): s.state.result for s in self.native._active}
        outs = [self._output(r, finished=False) for r in live.values()]
        return outs + [self._output(r, finished=True) for r in finished]

    def _output(self, result: Any, finished: bool) -> RequestOutput:
        comps = [CompletionOutput(i, list(c.tokens), [{t: Logprob(lp)} for t, lp in zip(c.tokens, c.logprobs)],
                                  c.text, (("length" if c.finish_reason == FINISH_LENGTH else "stop")
                                           if finished else None))
                 for i, c in enumerate(result.completions)]
        rid = self._ids.pop(result.request_id) if finished else self._ids[result.request_id]
        return RequestOutput(rid, comps, finished)


class LLM:
    def __init__(self, model: str, tokenizer: str, max_num_seqs: int, max_model_len: int | None, seed: int,
                 gpu_memory_utilization: float, dtype: str, logprobs_mode: str, **kwargs: Any) -> None:
        # vLLM's processed log-probs come after temperature and top-k/top-p; the stand-in's "tempered" after the
        # temperature only, the same when those filters are off (as RL runs them)
        modes = {"raw_logprobs": "raw", "processed_logprobs": "tempered"}
        assert logprobs_mode in modes, logprobs_mode
        self.logprobs_mode = logprobs_mode
        self.gpu_memory_utilization = gpu_memory_utilization
        native = Engine.from_pretrained(model, GenerateConfig(max_slots=max_num_seqs, context=max_model_len,
                                                              seed=seed, logprobs=modes[logprobs_mode]))
        self.path = model
        self.worker = _Worker(native)
        self.llm_engine = LLMEngine(native, native.context, native.vocab_size)
        INSTANCES.append(self)

    def collective_rpc(self, fn: Any, args: tuple[Any, ...] = ()) -> list[Any]:
        return [fn(self.worker, *args)]

    def reset_prefix_cache(self) -> bool:
        ok = not self.llm_engine.native.has_unfinished()
        if ok:
            self.llm_engine.cache.keys.clear()
        self.llm_engine.cache.resets.append(ok)
        return ok
