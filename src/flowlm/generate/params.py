"""Typed requests and results of the rollout engine: `SamplingParams`, `Request`, `Completion`, `Result`.

Sampling parameters are a frozen dataclass validated by `validate()` rather than in `__post_init__`:
an invalid request must not raise at `submit()` (a batch of 1,000 RL prompts should not die because
one row carries `top_p=2`), it must come back as a `Result` whose `error` says what is wrong while the
other requests complete. `SamplingParams.checked(...)` is the raising variant for callers (the CLI)
that want to fail early.

Logprobs: `Completion.logprobs[i]` is `log_softmax(raw logits)[token_i]` — the policy's own
probability at temperature 1 before top-k/top-p/min-p filtering — or, with the engine's
`GenerateConfig(logprobs="tempered")`, `log_softmax(raw logits / temperature)[token_i]`, still before the
filters. Either is what an RL importance ratio needs as long as the learner computes the same one
(vllm-project/vllm#42259, huggingface/trl#4159 show what goes wrong otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from flowlm.errors import ConfigError

# What `Completion.logprobs` holds (`GenerateConfig.logprobs`; see the module docstring): the raw logits'
# log-softmax, or the logits divided by the request's temperature. Both before top-k/top-p/min-p.
LOGPROBS_MODES = ("raw", "tempered")

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How to sample one request. `temperature=0` is greedy (argmax of the raw logits)."""

    temperature: float = 1.0
    """Softmax temperature; 0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (0 < p <= 1)."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 = off."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the most likely token's (0 <= p < 1)."""
    max_new_tokens: int = 256
    """Generated tokens at most (the stop token counts)."""
    stop: tuple[str, ...] = ()
    """Stop strings: generation ends once the decoded completion contains one; `text` is cut before it."""
    stop_token_ids: tuple[int, ...] = ()
    """Extra token ids that end generation (the engine's EOS is added unless `ignore_eos`)."""
    ignore_eos: bool = False
    """Do not stop at EOS (benchmarks that force an exact length)."""
    n: int = 1
    """Completions per prompt; they share one prefill."""
    seed: int | None = None
    """Seed of this request's sampler (completion i uses seed + i); None = the engine's generator."""

    def __post_init__(self) -> None:
        # Lists from JSON rows become tuples so the params stay hashable and immutable; anything
        # else is left for validate() to report.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        for name in ("stop", "stop_token_ids"):
            if isinstance(getattr(self, name), (list, tuple)):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def validate(self) -> str | None:
        """The first problem with these parameters as a one-line message, or None when valid."""
        checks: list[tuple[bool, str]] = [
            (_is_num(self.temperature) and self.temperature >= 0, f"temperature must be >= 0, got {self.temperature!r}"),
            (_is_num(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}"),
            (_is_int(self.top_k) and self.top_k >= 0, f"top_k must be an integer >= 0, got {self.top_k!r}"),
            (_is_num(self.min_p) and 0 <= self.min_p < 1, f"min_p must be in [0, 1), got {self.min_p!r}"),
            (_is_int(self.max_new_tokens) and self.max_new_tokens >= 1,
             f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}"),
            (_is_int(self.n) and self.n >= 1, f"n must be an integer >= 1, got {self.n!r}"),
            (self.seed is None or _is_int(self.seed), f"seed must be an integer or None, got {self.seed!r}"),
            (isinstance(self.stop, tuple) and all(isinstance(s, str) and s for s in self.stop),
             f"stop strings must be non-empty strings, got {self.stop!r}"),
            (isinstance(self.stop_token_ids, tuple) and all(_is_int(t) and t >= 0 for t in self.stop_token_ids),
             f"stop_token_ids must be integers >= 0, got {self.stop_token_ids!r}"),
        ]
        return next((msg for ok, msg in checks if not ok), None)

    @classmethod
    def checked(cls, **kwargs: Any) -> SamplingParams:
        """Construct and validate, raising `ConfigError` (for argument parsing)."""
        try:
            params = cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"sampling params: {exc}") from None
        problem = params.validate()
        if problem:
            raise ConfigError(f"sampling params: {problem}")
        return params


def check_slots(n: int, max_slots: int, what: str) -> None:
    """`--max-slots` >= 1 and `--n` <= `--max-slots` (the n samples of one `what` are decoded together)."""
    if max_slots < 1:
        raise ConfigError(f"--max-slots must be >= 1, got {max_slots}")
    if n > max_slots:
        raise ConfigError(f"--n {n} exceeds --max-slots {max_slots} (a {what}'s n samples are decoded together)")


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Request:
    """A prompt (token ids, already rendered) with its sampling parameters."""

    request_id: int
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    tag: Any = None
    """Caller's payload, returned unchanged on the result (e.g. the input row)."""


@dataclass
class Completion:
    """One sampled continuation of a prompt."""

    tokens: list[int] = field(default_factory=list)
    """Generated token ids, the stop token included."""
    logprobs: list[float] = field(default_factory=list)
    """Raw-policy log-probability of each generated token (see module docstring)."""
    versions: list[int] = field(default_factory=list)
    """Policy version whose weights computed the logits each token was sampled from."""
    text: str = ""
    """Decoded completion (special tokens skipped), cut before a matched stop string."""
    finish_reason: str = ""
    """`stop` (EOS, stop token or stop string) or `length` (max_new_tokens or the context is full)."""
    tool_mask: list[int] | None = None
    """With tools (`flowlm.tools.engine.ToolEngine`): 1 for each token of a tool turn (the tool's answer and
    the next generation prompt, written by the template, not sampled), 0 for sampled tokens; None without."""
    tool_calls: int = 0
    """Tool calls run for this completion (`ToolEngine`)."""
    tool_errors: int = 0
    """Of those, and of malformed calls, the ones answered `error: ...`."""
    trajectory: list[dict[str, Any]] | None = None
    """With tools: the messages after the prompt (assistant turns with their calls, tool answers)."""


@dataclass
class Timings:
    """Wall-clock seconds (time.perf_counter) of a request's life."""

    submitted: float = 0.0
    started: float = 0.0
    """Prefill began."""
    first_token: float = 0.0
    finished: float = 0.0

    @property
    def latency(self) -> float | None:
        """Seconds from submit to the last completion finishing; None if it never finished."""
        return self.finished - self.submitted if self.finished else None

    @property
    def ttft(self) -> float | None:
        """Time to first token; None when no token was generated (a rejected request)."""
        return self.first_token - self.submitted if self.first_token else None


@dataclass
class Result:
    """Everything about one finished request; `error` set means nothing was generated."""

    request_id: int
    prompt_ids: list[int]
    completions: list[Completion]
    timings: Timings
    error: str | None = None
    tag: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def num_generated(self) -> int:
        return sum(len(c.tokens) for c in self.completions)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the CLI's output row, minus the input fields)."""
        return {
            "request_id": self.request_id, "error": self.error, "prompt_ids": self.prompt_ids,
            "completions": [_completion_dict(c) for c in self.completions],
            "timings": {"latency_s": _seconds(self.timings.latency), "ttft_s": _seconds(self.timings.ttft)},
        }


def _completion_dict(c: Completion) -> dict[str, Any]:
    out = {"text": c.text, "tokens": c.tokens, "logprobs": c.logprobs, "versions": c.versions,
           "finish_reason": c.finish_reason}
    if c.tool_mask is not None:  # with tools (`flowlm.tools.engine`)
        out.update(tool_mask=c.tool_mask, tool_calls=c.tool_calls, tool_errors=c.tool_errors, trajectory=c.trajectory)
    return out


def _seconds(value: float | None) -> float | None:
    """A duration for JSON: rounded to the microsecond; None (null) for a time that never happened."""
    return None if value is None else round(value, 6)
