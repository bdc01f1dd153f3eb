"""The rollout engine: continuous batching over a slot KV cache, per-token logprobs and policy versions.

    engine = Engine(model, tokenizer)                   # or Engine.from_pretrained(ckpt_dir)
    rid = engine.submit([{"role": "user", "content": "2+2?"}], SamplingParams(n=4, temperature=1))
    for result in engine.stream():                       # results as requests finish
        ...
    engine.update_weights(trainer_model.state_dict())    # inflight: applied between two steps

Scheduling (one `step()`): apply nothing mid-step; admit waiting requests into free slots (a request
with n samples needs n slots and is prefilled once), sample their first tokens, then run ONE batched
decode forward over every active slot. A finished sequence frees its slot at once: the last active
slot is moved into it so live slots stay contiguous (`0..n-1`) and no decode compute is spent on
idle slots. Requests are admitted in submission order (FIFO; a large-n request at the head waits for
enough free slots rather than being overtaken, so nothing starves).

Weights: `update_weights` is applied at a step boundary (queued while a step runs), so it lands
between two decode steps; in-flight
sequences continue with the new weights on top of the keys/values the old weights cached (the
OLMo 3 / open-instruct "inflight updates" behaviour). Each token records the version of the weights
that produced its logits. The engine keeps its own copy of the model by default, so a trainer
updating its parameters in place cannot change the policy under a running step unannounced.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flowlm.errors import ConfigError
from flowlm.generate.params import (FINISH_LENGTH, FINISH_STOP, LOGPROBS_MODES, Completion, Request, Result,
                                    SamplingParams, Timings)
from flowlm.generate.driver import Driver, InflightUpdates
from flowlm.generate.prompts import Prompt, check_prompt, ends_its_turn, to_prompt_ids
from flowlm.generate.sampling import sample
from flowlm.generate.threads import one_thread
from flowlm.model.tokenizer import decode_reply


@dataclass(frozen=True, kw_only=True)
class GenerateConfig:
    """Capacity and placement of an engine."""

    max_slots: int = 64
    """Sequences decoded together (KV-cache slots)."""
    context: int | None = None
    """Prompt + completion tokens per sequence; default and upper bound: the model's max_seq_len."""
    max_prefill_tokens: int = 8192
    """Padded prompt tokens prefilled in one step (bounds the memory of a prefill batch)."""
    seed: int = 0
    """Seed of the generator used by requests without their own seed."""
    enable_thinking: bool = True
    """Chat prompts: render the generation prompt with thinking on (Qwen3 convention)."""
    logprobs: str = "raw"
    """`Completion.logprobs`: "raw" = log_softmax of the raw logits (temperature 1); "tempered" = of the logits
    divided by the request's temperature (greedy requests: raw). Both before top-k/top-p/min-p. RL uses
    "tempered" (the sampling temperature's policy, as TRL / open-instruct / veRL train it)."""

    def __post_init__(self) -> None:
        if self.max_slots < 1 or self.max_prefill_tokens < 1 or (self.context is not None and self.context < 2):
            raise ConfigError(f"generate engine: invalid capacity {self}")
        if self.logprobs not in LOGPROBS_MODES:
            raise ConfigError(f"generate engine: logprobs must be one of {', '.join(LOGPROBS_MODES)}, "
                              f"not {self.logprobs!r}")


class _Seq:
    """One completion being generated (one slot)."""

    __slots__ = ("state", "index", "completion", "rng", "next_token", "stop_ids")

    def __init__(self, state: _RequestState, index: int, rng: np.random.Generator | None,
                 stop_ids: frozenset[int]) -> None:
        self.state, self.index, self.rng, self.stop_ids = state, index, rng, stop_ids
        self.completion = state.result.completions[index]
        self.next_token = -1


class _RequestState:
    """A request admitted or waiting, with the result being filled."""

    def __init__(self, request: Request, result: Result) -> None:
        self.request, self.result = request, result
        self.remaining = request.params.n


class Engine(InflightUpdates, Driver):
    """Continuous-batching generator over a native `Olmo3` or any HF causal LM (see module docstring)."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, config: GenerateConfig | None = None, *,
                 eos_token_ids: Iterable[int] | None = None, copy_model: bool = True, _owned: bool = False) -> None:
        from flowlm.generate.hf_runner import HFRunner, find_hf_model
        from flowlm.generate.native import NativeRunner
        from flowlm.model.olmo3 import Olmo3

        self.config = config or GenerateConfig()
        self.tokenizer = tokenizer
        model = (copy.deepcopy(model) if copy_model else model).eval()
        if isinstance(model, Olmo3):
            self.runner: Any = NativeRunner(model, self.config.max_slots, self.config.context,
                                            owned=copy_model or _owned)
        else:
            hf = find_hf_model(model)
            if hf is None:
                raise ConfigError(f"generate: unsupported model type {type(model).__name__}")
            self.runner = HFRunner(hf, self.config.max_slots, self.config.context)
        # a wrapper's state dict names the HF model's weights under its prefix (the adapter's "hf.")
        self.weight_prefix = getattr(model, "checkpoint_prefix", "") if model is not self.runner.model else ""
        self.eos_ids = frozenset(eos_token_ids if eos_token_ids is not None else _default_eos(tokenizer, model))
        self.version = 0
        self._rng = np.random.default_rng(self.config.seed)
        self._lock = threading.Lock()  # guards the queues (submit may come from other threads)
        self._step_lock = threading.Lock()  # held for a whole step; update_weights waits for it
        self._waiting: deque[_RequestState] = deque()
        self._ready: list[Result] = []
        self._active: list[_Seq] = []
        self._next_id = 0
        self._unfinished = 0
        self._pending: tuple[dict[str, torch.Tensor], int, bool] | None = None
        self._waiters: list[threading.Event] = []
        self.stats = {"decode_steps": 0, "decode_slots": 0, "generated_tokens": 0, "prefill_tokens": 0}

    @classmethod
    def from_pretrained(cls, path: str | Path, config: GenerateConfig | None = None, **kwargs: Any) -> Engine:
        """Load a checkpoint directory: flowlm/HF Olmo3 → native model, any other HF causal LM → HF path."""
        from flowlm.model.tokenizer import load_tokenizer

        model = _load_model(Path(path))
        tok = load_tokenizer(path) if (Path(path) / "tokenizer.json").exists() else None
        return cls(model, tok, config, copy_model=False, _owned=True, **kwargs)

    # ---- public API ----------------------------------------------------------------------------
    @property
    def context(self) -> int:
        return self.runner.context

    def submit(self, prompt: Prompt, params: SamplingParams | None = None, *, tag: Any = None) -> int:
        """Queue one request; returns its id. Problems (bad params, empty or too long prompt) do not
        raise: the request's result carries the error and comes out of the next `step()`."""
        params = params or SamplingParams()
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            self._unfinished += 1
        now = time.perf_counter()
        params = ends_its_turn(prompt, params, self.tokenizer)
        ids, error = self.prepare(prompt, params)
        request = Request(rid, tuple(ids), params, tag)
        completions = [] if error else [Completion() for _ in range(params.n)]
        result = Result(rid, list(ids), completions, Timings(submitted=now), error=error, tag=tag)
        with self._lock:
            if error:
                result.timings.finished = now
                self._ready.append(result)
            else:
                self._waiting.append(_RequestState(request, result))
        return rid

    @property
    def vocab_size(self) -> int:
        return self.runner.vocab_size

    def prepare(self, prompt: Prompt, params: SamplingParams) -> tuple[list[int], str | None]:
        """The prompt's token ids and why it cannot be generated (one line), or None: what `submit` checks,
        for callers that want to reject bad input before submitting anything."""
        try:
            ids, error = to_prompt_ids(prompt, self.tokenizer, self.config.enable_thinking), params.validate()
        except Exception as exc:  # untrusted input: a bad row must not take the engine down
            return [], f"bad prompt: {exc}"
        return ids, error or check_prompt(ids, params, context=self.context, vocab_size=self.vocab_size,
                                          max_n=self.config.max_slots)

    def has_unfinished(self) -> bool:
        return self._unfinished > 0

    def step(self) -> list[Result]:
        """Admit waiting requests, decode one token for every active sequence; return finished results."""
        with self._step_lock, torch.inference_mode():
            self._apply_pending()
            self._admit()
            if self._active:
                self._decode()
        with self._lock:
            done, self._ready = self._ready, []
            self._unfinished -= len(done)
        return done

    def _checked_state(self, state: dict[str, torch.Tensor], strict: bool) -> dict[str, torch.Tensor]:
        """`state` under the runner's names (a wrapper's `weight_prefix` stripped), checked."""
        prefix = self.weight_prefix
        if prefix:
            state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
        self._check_keys(state, strict)
        return state

    def _load_state(self, state: dict[str, torch.Tensor], version: int, strict: bool) -> None:
        with torch.inference_mode():
            self.runner.load_weights(state, strict=strict)
        self.version = version

    def _check_keys(self, state: dict[str, torch.Tensor], strict: bool) -> None:
        """Reject a mismatched state dict in the caller's thread, not later inside a step."""
        expected = set(self.runner.model.state_dict())
        unknown, missing = sorted(set(state) - expected), sorted(expected - set(state))
        if unknown or (strict and missing):
            raise ConfigError(f"update_weights: unknown keys {unknown[:3]}, missing keys {missing[:3]}")

    # ---- scheduling ----------------------------------------------------------------------------
    def _admit(self) -> None:
        """Move waiting requests into free slots (FIFO) within the prefill budget, prefill, sample."""
        batch: list[_RequestState] = []
        free = self.config.max_slots - len(self._active)
        longest = 0
        with self._lock:
            while self._waiting:
                st = self._waiting[0]
                n, length = st.request.params.n, len(st.request.prompt_ids)
                padded = max(longest, length) * (len(batch) + 1)
                if n > free or (batch and padded > self.config.max_prefill_tokens):
                    break
                batch.append(self._waiting.popleft())
                free -= n
                longest = max(longest, length)
        if not batch:
            return
        start = len(self._active)
        groups, seqs = [], []
        for st in batch:
            params = st.request.params
            st.result.timings.started = time.perf_counter()
            groups.append(list(range(start + len(seqs), start + len(seqs) + params.n)))
            for i in range(params.n):
                rng = None if params.seed is None else np.random.default_rng([params.seed + i])
                stop = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.eos_ids)
                seqs.append(_Seq(st, i, rng, stop))
        logits = self.runner.prefill([st.request.prompt_ids for st in batch], groups)
        self.stats["prefill_tokens"] += sum(len(st.request.prompt_ids) for st in batch)
        self._active.extend(seqs)
        rows = torch.as_tensor([b for b, st in enumerate(batch) for _ in range(st.request.params.n)])
        self._sample_and_record(logits[rows.to(logits.device)], start)

    def _decode(self) -> None:
        tokens = torch.as_tensor([s.next_token for s in self._active], dtype=torch.long)
        logits = self.runner.decode(tokens)
        self.stats["decode_steps"] += 1
        self.stats["decode_slots"] += len(tokens)
        self._sample_and_record(logits, 0)

    def _sample_and_record(self, logits: torch.Tensor, start: int) -> None:
        """Sample for slots `start..` (rows of `logits`), append tokens, retire finished sequences."""
        seqs = self._active[start:start + logits.shape[0]]
        ps = [s.state.request.params for s in seqs]
        uniform = self._rng.random(len(seqs))
        for i, s in enumerate(seqs):
            if s.rng is not None:
                uniform[i] = s.rng.random()
        dev = logits.device
        with one_thread(dev):  # a few dozen small ops: waking a second CPU thread costs more than it saves
            tokens, logps = self._sample(logits, ps, uniform, tempered=self.config.logprobs == "tempered")
        now = time.perf_counter()
        finished = []
        for i, (s, tok, lp) in enumerate(zip(seqs, tokens.tolist(), logps.tolist())):
            c = s.completion
            c.tokens.append(tok)
            c.logprobs.append(lp)
            c.versions.append(self.version)
            s.next_token = tok
            if len(c.tokens) == 1 and not s.state.result.timings.first_token:
                s.state.result.timings.first_token = now
            reason = self._finish_reason(s)
            if reason:
                c.finish_reason = reason
                finished.append(start + i)
        self.stats["generated_tokens"] += len(seqs)
        for slot in sorted(finished, reverse=True):
            self._retire(slot)

    @staticmethod
    def _sample(logits: torch.Tensor, ps: list[SamplingParams], uniform: np.ndarray, *,
                tempered: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """`sampling.sample` with each row's parameters."""
        dev = logits.device
        return sample(
            logits, temperature=torch.tensor([p.temperature for p in ps], device=dev, dtype=torch.float32),
            top_k=torch.tensor([p.top_k for p in ps], device=dev), top_p=torch.tensor([p.top_p for p in ps], device=dev),
            min_p=torch.tensor([p.min_p for p in ps], device=dev), uniform=torch.from_numpy(uniform).to(dev),
            needs_filter=any(p.top_k > 0 or p.top_p < 1 or p.min_p > 0 for p in ps),
            any_greedy=any(p.temperature <= 0 for p in ps), all_unit_temperature=all(p.temperature == 1 for p in ps),
            tempered=tempered)

    def _finish_reason(self, s: _Seq) -> str | None:
        c, params = s.completion, s.state.request.params
        if c.tokens[-1] in s.stop_ids:
            return FINISH_STOP
        if params.stop and self.tokenizer is not None:
            longest = max(len(x) for x in params.stop)
            tail = decode_reply(self.tokenizer, c.tokens[-(longest + 8):])
            if any(x in tail for x in params.stop):
                return FINISH_STOP
        if len(c.tokens) >= params.max_new_tokens or len(s.state.request.prompt_ids) + len(c.tokens) >= self.context:
            return FINISH_LENGTH
        return None

    def _retire(self, slot: int) -> None:
        """Free `slot` now: move the last active sequence into it; finish the request if it was the last."""
        s = self._active[slot]
        last = len(self._active) - 1
        if slot != last:
            self.runner.move(last, slot)
            self._active[slot] = self._active[last]
        self._active.pop()
        self.runner.release(last)
        self._finalize_completion(s)

    def _finalize_completion(self, s: _Seq) -> None:
        c, st = s.completion, s.state
        c.text = self._text(c.tokens, st.request.params)
        st.remaining -= 1
        if st.remaining == 0:
            st.result.timings.finished = time.perf_counter()
            with self._lock:
                self._ready.append(st.result)

    def _text(self, tokens: list[int], params: SamplingParams) -> str:
        if self.tokenizer is None:
            return ""
        return decode_reply(self.tokenizer, tokens, params.stop)


def _default_eos(tokenizer: Any, model: nn.Module) -> set[int]:
    """EOS ids from the tokenizer and the HF generation config (either may be absent)."""
    ids: set[int] = set()
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is not None:
        ids.update([eos] if isinstance(eos, int) else eos)
    return ids


def _load_model(path: Path) -> nn.Module:
    """Native `Olmo3` for flowlm/Olmo3 checkpoints, else any local HF causal LM (via the adapter when present)."""
    import json

    from flowlm.errors import FlowError

    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FlowError(f"{cfg_file}: missing (not a model checkpoint directory)")
    model_type = json.loads(cfg_file.read_text()).get("model_type")
    if model_type == "olmo3" or (path / "flowlm.json").exists():
        from flowlm.model.hf import load_native

        return load_native(path)[0]
    try:
        from flowlm.model.adapter import load_causal_lm
    except ImportError:  # adapter not available: plain transformers loading
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    return load_causal_lm(path)
