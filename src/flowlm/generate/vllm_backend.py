"""vLLM behind the engine interface (`submit` / `step` / `stream` / `generate` / `update_weights`), for GPUs.

    engine = VLLMEngine("runs/x/ckpt", max_slots=256)
    engine.submit(messages, SamplingParams(n=8, temperature=1.0))
    for result in engine.stream(): ...
    engine.update_weights(policy.state_dict())       # inflight, between two engine steps

Design choices (following open-instruct's `vllm_utils.py`, see reference/rl-anchors.md):
* The synchronous `LLMEngine` is driven one `step()` at a time with the V1 engine core *in process*
  (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so a weight update issued between two `step()` calls lands
  exactly between two scheduler iterations and the per-token policy versions we record are exact (with
  the multiprocess core, tokens computed ahead in the core's queue would be attributed to the new
  version).
* Weights go in through `collective_rpc` running `model_runner.model.load_weights(...)` on every
  worker — the path open-instruct uses; requests in flight keep their KV cache (inflight updates).
  This is a host-memory handoff suited to one process and one GPU; multi-node NCCL broadcast
  (open-instruct `--vllm_sync_backend nccl`) is not implemented here.
* **Pause with keep-mode** is what the step lock gives: `update_weights` runs between two scheduler
  iterations (a call made while a step runs is queued and applied when it ends, as in the native engine),
  so nothing is computed during the swap and every request, waiting or running, stays with its KV cache
  (open-instruct pauses its async vLLM with `sleep(level=0, mode="keep")` for the same effect).
* **No stale KV is reused across policy versions.** Every request carries a prefix-cache salt naming the
  policy version it was submitted under (vLLM's `cache_salt`), so a prompt submitted after an update
  never hits prefix blocks computed with older weights. After each update the prefix cache is also reset
  (`reset_prefix_cache`), which frees the old blocks; vLLM refuses that while running requests hold
  blocks, and the refusal is counted (`stats["prefix_cache_resets_refused"]`): the salt already keeps
  those blocks from the new version. A request keeps the salt it was submitted with, like its KV.
* Logprobs: `logprobs="raw"` (default) is vLLM's `raw_logprobs` mode, log_softmax of the raw logits at
  temperature 1, the same quantity the native engine records; `logprobs="tempered"` is its
  `processed_logprobs` mode, after the request's temperature, as the native engine's `tempered` (RL at a
  temperature other than 1). vLLM's processed log-probs also come after top-k / top-p, the native
  engine's do not: the two agree when those are off, as RL runs them (a top-p below 1 would show in the
  mismatch band as the renormalisation, TRL #6789).

Importing this module never needs vLLM; constructing a `VLLMEngine` without it raises a one-line
`ConfigError` naming the `vllm` extra. Not exercised on the CPU development machine (its tests need CUDA).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from flowlm.errors import ConfigError
from flowlm.extras import require
from flowlm.generate.params import (FINISH_LENGTH, FINISH_STOP, LOGPROBS_MODES, Completion, Result, SamplingParams,
                                    Timings)
from flowlm.generate.driver import Driver, InflightUpdates
from flowlm.generate.prompts import Prompt, check_prompt, ends_its_turn, to_prompt_ids
from flowlm.model.tokenizer import decode_reply


def require_vllm() -> Any:
    """The `vllm` module, or a one-line `ConfigError` saying how to get it."""
    return require("vllm", "vllm", "the vLLM backend (CUDA)")


_VLLM_LOGPROBS = {"raw": "raw_logprobs", "tempered": "processed_logprobs"}  # LOGPROBS_MODES -> vLLM's names


def _load_weights_on_worker(worker: Any, weights: list[tuple[str, Any]]) -> None:
    """Runs inside each vLLM worker (via `collective_rpc`): copy weights into the model in place."""
    worker.model_runner.model.load_weights(weights=weights)


class VLLMEngine(InflightUpdates, Driver):
    """The rollout-engine interface over a vLLM `LLMEngine` (see module docstring)."""

    def __init__(self, model_path: str | Path, tokenizer: Any = None, *, max_slots: int = 256,
                 context: int | None = None, seed: int = 0, enable_thinking: bool = True,
                 gpu_memory_utilization: float = 0.85, dtype: str = "auto", weight_prefix: str = "",
                 logprobs: str = "raw", **llm_kwargs: Any) -> None:
        if logprobs not in LOGPROBS_MODES:
            raise ConfigError(f"vllm engine: logprobs must be one of {', '.join(LOGPROBS_MODES)}, not {logprobs!r}")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = require_vllm()
        from flowlm.model.tokenizer import load_tokenizer

        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_path)
        self.llm = vllm.LLM(model=str(model_path), tokenizer=str(model_path), max_num_seqs=max_slots,
                            max_model_len=context, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                            dtype=dtype, logprobs_mode=_VLLM_LOGPROBS[logprobs], **llm_kwargs)
        self._engine = self.llm.llm_engine
        cfg = self._engine.model_config
        self.context, self.vocab_size = cfg.max_model_len, cfg.get_vocab_size()
        self.max_slots, self.enable_thinking = max_slots, enable_thinking
        self.version = 0
        self.weight_prefix = weight_prefix  # stripped from update_weights' names (an HF adapter's "hf.")
        self.export_dir: Path | None = None  # from_policy: the temporary checkpoint's directory
        self._lock = threading.Lock()  # the request tables and the vLLM engine's calls
        self._step_lock = threading.Lock()  # held for a whole step: updates land between two steps
        self._pending: tuple[dict[str, Any], int, bool] | None = None  # a queued update (the newest wins)
        self._waiters: list[threading.Event] = []
        self._next_id = 0
        self._ready: list[Result] = []
        self._live: dict[str, Result] = {}
        self._stops: dict[str, tuple[str, ...]] = {}  # per live request: the stop strings its text is cut at
        self.stats = {"generated_tokens": 0, "steps": 0, "weight_updates": 0, "prefix_cache_resets": 0,
                      "prefix_cache_resets_refused": 0}

    @classmethod
    def from_policy(cls, model: Any, tokenizer: Any, **kwargs: Any) -> "VLLMEngine":
        """An engine over an in-memory policy (native or HF-adapted): exported once as an HF checkpoint to a
        new temporary directory, which vLLM loads; later weights go in place through `update_weights`. The
        directory to remove when done is `engine.export_dir`."""
        import tempfile

        from flowlm.model.adapter import save

        require_vllm()  # the one-line error before any export
        export_dir = Path(tempfile.mkdtemp(prefix="flowlm-vllm-"))
        try:
            engine = cls(save(model, export_dir / "policy", tokenizer), tokenizer,
                         weight_prefix=getattr(model, "checkpoint_prefix", ""), **kwargs)
        except BaseException:
            shutil.rmtree(export_dir, ignore_errors=True)
            raise
        engine.export_dir = export_dir
        return engine

    def submit(self, prompt: Prompt, params: SamplingParams | None = None, *, tag: Any = None) -> int:
        """Queue one request; problems come back as an error result from the next `step()`."""
        params = params or SamplingParams()
        with self._lock:
            rid, self._next_id = self._next_id, self._next_id + 1
        params = ends_its_turn(prompt, params, self.tokenizer)
        ids, error = self.prepare(prompt, params)
        result = Result(rid, list(ids), [], Timings(submitted=time.perf_counter()), error=error, tag=tag)
        with self._lock:
            if error:
                result.timings.finished = result.timings.submitted
                self._ready.append(result)
                return rid
            result.completions = [Completion() for _ in range(params.n)]
            self._live[str(rid)] = result
            self._stops[str(rid)] = tuple(params.stop)
            prompt = {"prompt_token_ids": ids, "cache_salt": self.cache_salt()}
            self._engine.add_request(str(rid), prompt, self._to_vllm(params))
        return rid

    def cache_salt(self) -> str:
        """The prefix-cache namespace of requests submitted now: one per policy version."""
        return f"flowlm-policy-v{self.version}"

    def prepare(self, prompt: Prompt, params: SamplingParams) -> tuple[list[int], str | None]:
        """The prompt's token ids and why it cannot be generated (one line), or None (see `Engine.prepare`)."""
        try:
            ids, error = to_prompt_ids(prompt, self.tokenizer, self.enable_thinking), params.validate()
        except Exception as exc:  # untrusted input
            return [], f"bad prompt: {exc}"
        return ids, error or check_prompt(ids, params, context=self.context, vocab_size=self.vocab_size,
                                          max_n=self.max_slots)

    def _to_vllm(self, p: SamplingParams) -> Any:
        vllm = require_vllm()
        return vllm.SamplingParams(
            n=p.n, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k if p.top_k > 0 else -1,
            min_p=p.min_p, max_tokens=p.max_new_tokens, stop=list(p.stop) or None,
            stop_token_ids=list(p.stop_token_ids) or None, ignore_eos=p.ignore_eos, seed=p.seed, logprobs=0)

    def has_unfinished(self) -> bool:
        return bool(self._live or self._ready)

    def step(self) -> list[Result]:
        """One vLLM scheduler iteration (after any queued weight update); returns the finished requests."""
        with self._step_lock:
            self._apply_pending()
            with self._lock:
                outputs = self._engine.step() if self._live else []
                self.stats["steps"] += 1
                now = time.perf_counter()
                for out in outputs:
                    self._absorb(out, now)
                done, self._ready = self._ready, []
        return done

    def _absorb(self, out: Any, now: float) -> None:
        """Append the new tokens of a (cumulative) vLLM output, tagging them with the current version."""
        result = self._live[out.request_id]
        for seq in out.outputs:
            c = result.completions[seq.index]
            new = list(seq.token_ids)[len(c.tokens):]
            if new and not result.timings.first_token:
                result.timings.first_token = now
            for pos, tok in enumerate(new, start=len(c.tokens)):
                c.logprobs.append(float(seq.logprobs[pos][tok].logprob))
            c.tokens.extend(new)
            c.versions.extend([self.version] * len(new))
            self.stats["generated_tokens"] += len(new)
            if seq.finish_reason:
                c.finish_reason = FINISH_LENGTH if seq.finish_reason == "length" else FINISH_STOP
                # flowlm's text, not vLLM's: vLLM skips every special token, markup a parser reads included
                c.text = decode_reply(self.tokenizer, c.tokens, self._stops.get(out.request_id, ()))
        if out.finished:
            result.timings.finished = now
            self._stops.pop(out.request_id, None)
            self._ready.append(self._live.pop(out.request_id))

    def _checked_state(self, state: dict[str, Any], strict: bool) -> dict[str, Any]:
        """The learner's names without `weight_prefix` (vLLM's loader checks them when it loads)."""
        prefix = self.weight_prefix
        return {(k[len(prefix):] if prefix and k.startswith(prefix) else k): v for k, v in state.items()}

    def _load_state(self, state: dict[str, Any], version: int, strict: bool) -> None:
        """Load into every worker, then reset the prefix cache: that frees the blocks of older versions, and
        vLLM refuses it while running requests hold blocks (the salt keeps those from new requests anyway)."""
        items = [(name, t.detach()) for name, t in state.items()]
        with self._lock:
            self.llm.collective_rpc(_load_weights_on_worker, args=(items,))
            self.version = version
            self.stats["weight_updates"] += 1
            reset = self.llm.reset_prefix_cache()
            self.stats["prefix_cache_resets" if reset is not False else "prefix_cache_resets_refused"] += 1
