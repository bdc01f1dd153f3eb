"""Cold-start SFT data by rejection sampling (Qwen3 stage 1, and the thinking-mode fusion data of stage 3).

    rows, acc = build_coldstart(prompt_rows, teacher, ColdStartCfg(n=8, keep_per_prompt=1), decontam=deco)

For each prompt row: the query filters (`unverifiable`, `contaminated`, and with a `query_teacher`
`too_easy`: Qwen3 asked a separate instruct model, Qwen2.5-72B-Instruct, to answer without reasoning;
with `query.hard_to_verify` also `hard_to_verify`, the same model's verdict on sub-questions and general
writing), then `n` candidates from the teacher, each checked by the response filters
(`flowlm.post.filters.check_response`); the first `keep_per_prompt` accepted, distinct candidates
become SFT chat rows `{"messages": [..., {"role": "assistant", "content", "reasoning_content"}], ...}`.

Function-calling rows (their own `tools`, e.g. from `flowlm rl prompts --suite bfcl=...`, with a `tool_call`
ground truth): the teacher's prompt lists the row's functions, nothing runs, and the call is the answer the
verifier checks. A kept row has the reply's calls as structured `tool_calls` and the functions as its
`tools`, so SFT renders them in any template's own format.

Modes (Qwen3 thinking-mode fusion): a prompt is answered in non-thinking mode when its latest soft
switch is `/no_think`, or for a deterministic `no_think_fraction` of the prompts; those rows
carry `/no_think` at the end of the user turn and an empty `reasoning_content`, as
`flowlm.data.builtin.sft_examples` writes them.

Accounting (the data pipeline's style, `flowlm.data.accounting.StepStats`): step `prompts` counts prompt
rows in / kept (at least one row written) / dropped by reason; step `candidates` counts every sampled
candidate in / kept (written) / dropped by filter reason, `duplicate` (same as an accepted one) or
`surplus` (accepted beyond `keep_per_prompt`). Tokens are whitespace words. Both steps must conserve
(in = kept + dropped), and the rows written must equal the kept candidates; `check()` raises otherwise.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import model_validator

from flowlm.config import Strict
from flowlm.data.accounting import StepStats, count_tokens
from flowlm.errors import FlowError
from flowlm.post.filters import (QueryFilterCfg, ResponseFilterCfg, check_response, hard_to_verify, pass_rates,
                                 query_problem, too_easy)
from flowlm.post.procedural import _IndexedTeacher
from flowlm.post.teachers import (Message, Response, Teacher, ask, assistant_message, call_message, prompt_messages,
                                  wants_no_think, with_mode)
from flowlm.rl.rows import row_tools

META_KEYS = ("task", "dataset", "verifier", "ground_truth", "verifiers", "weights")
"""Prompt-row columns copied into every output row (the verifier routing, so the rows stay checkable)."""


class ColdStartCfg(Strict):
    """Rejection sampling for cold-start / mode-fusion SFT rows."""

    n: int = 8
    """Candidates sampled per prompt (Qwen3: N responses from QwQ-32B per query)."""
    keep_per_prompt: int = 1
    """Accepted, distinct candidates written per prompt at most."""
    no_think_fraction: float = 0.0
    """Share of prompts answered in non-thinking mode (`/no_think`, empty reasoning); 0 = thinking only."""
    seed: int = 0
    """Seed of the teacher's sampling and of the mode choice."""
    chunk: int = 256
    """Prompts sampled together (bounds memory; a model teacher batches them continuously)."""
    filters: ResponseFilterCfg = ResponseFilterCfg()
    query: QueryFilterCfg = QueryFilterCfg()

    @model_validator(mode="after")
    def _check(self) -> ColdStartCfg:
        if self.n < 1 or self.keep_per_prompt < 1 or self.chunk < 1:
            raise ValueError("n, keep_per_prompt and chunk must be >= 1")
        if not 0.0 <= self.no_think_fraction <= 1.0:
            raise ValueError(f"no_think_fraction must be in [0, 1], got {self.no_think_fraction}")
        return self


@dataclass
class Accounting:
    """Named `StepStats` (in / kept / dropped by reason), each conserving on its own."""

    steps: dict[str, StepStats] = field(default_factory=dict)

    @classmethod
    def of(cls, *names: str) -> Accounting:
        return cls({n: StepStats(n) for n in names})

    def __getitem__(self, name: str) -> StepStats:
        return self.steps[name]

    def check(self) -> None:
        """Raise FlowError unless every step conserves (in = kept + sum of dropped)."""
        for st in self.steps.values():
            st.check()

    def to_dict(self) -> dict[str, Any]:
        return {name: st.to_dict() for name, st in self.steps.items()}

    def table(self) -> str:
        """One line per step, as `flowlm data` prints its accounting."""
        lines = []
        for name, st in self.steps.items():
            drops = ", ".join(f"{k}={v.docs}" for k, v in sorted(st.dropped.items()))
            lines.append(f"{name:10s} in {st.inp.docs:>7} ({st.inp.tokens:>9} tok) -> kept {st.kept.docs:>7} "
                         f"({st.kept.tokens:>9} tok)  {drops}")
        return "\n".join(lines)


def response_tokens(resp: Mapping[str, Any]) -> int:
    return count_tokens(str(resp.get("reasoning") or "")) + count_tokens(str(resp.get("content") or ""))


def prompt_tokens(msgs: Sequence[Message]) -> int:
    return sum(count_tokens(str(m.get("content") or "")) for m in msgs)


def row_id(row: Mapping[str, Any], index: int) -> str:
    return str(row.get("id", f"row{index}"))


def chunks(items: Sequence[Any], size: int) -> Iterator[tuple[int, Sequence[Any]]]:
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def thinking_mode(msgs: Sequence[Message], no_think_fraction: float, seed: int, key: str) -> bool:
    """Thinking unless the user asked for `/no_think` or the (seed, key) draw falls in `no_think_fraction`."""
    if wants_no_think(msgs):
        return False
    return no_think_fraction <= 0 or random.Random(f"mode:{seed}:{key}").random() >= no_think_fraction


@dataclass
class _Prompt:
    index: int
    row: Mapping[str, Any]
    msgs: list[Message]
    thinking: bool = True
    pass_rate: float | None = None
    functions: list[dict[str, Any]] | None = None  # the row's own (`tools`): its prompt lists them


def build_coldstart(rows: Iterable[Mapping[str, Any]], teacher: Teacher, cfg: ColdStartCfg | None = None, *,
                    decontam: Any | None = None, query_teacher: Teacher | None = None,
                    ) -> tuple[list[dict[str, Any]], Accounting]:
    """Rejection-sample SFT chat rows from `teacher` for prompt `rows` (see the module docstring).

    `decontam`: a `flowlm.data.decontam.Decontaminator` over the evaluation sets (prompts and responses
    that match an item are dropped as `contaminated`). `query_teacher`: the model whose non-thinking
    pass rate decides `too_easy` (None: no too-easy filter; pass `teacher` to use the teacher itself).
    """
    cfg = cfg or ColdStartCfg()
    rows = list(rows)
    if cfg.query.hard_to_verify and (query_teacher is None or isinstance(query_teacher, _IndexedTeacher)):
        raise FlowError("coldstart: query.hard_to_verify needs a model as the query teacher (it is asked about "
                        "each prompt)")
    acc = Accounting.of("prompts", *(("judge",) if cfg.query.hard_to_verify else ()), "candidates")
    out: list[dict[str, Any]] = []
    for start, part in chunks(rows, cfg.chunk):
        live = _query_filter(part, start, cfg, acc, decontam, query_teacher)
        out += _sample_and_filter(live, teacher, cfg, acc, decontam)
    acc.check()
    if len(out) != acc["candidates"].kept.docs:
        raise FlowError(f"accounting: {len(out)} rows written but {acc['candidates'].kept.docs} candidates kept")
    return out, acc


def _query_filter(part: Sequence[Mapping[str, Any]], start: int, cfg: ColdStartCfg, acc: Accounting,
                  decontam: Any | None, query_teacher: Teacher | None) -> list[_Prompt]:
    """Prompts that survive the query filters; every prompt is recorded as input, the dropped ones by reason.
    With `hard_to_verify`, step `judge` counts the prompts asked: kept, a yes or no; dropped `unclear`, any
    other reply (its prompt stays)."""
    prompts = acc["prompts"]
    live: list[_Prompt] = []
    for i, row in enumerate(part, start):
        try:
            msgs, functions = prompt_messages(row), row_tools(dict(row))
        except ValueError:
            prompts.record_in(0)
            prompts.record_drop("bad_prompt", 0)
            continue
        prompts.record_in(prompt_tokens(msgs))
        reason = query_problem(row, cfg.query, decontam=decontam)
        if reason:
            prompts.record_drop(reason, prompt_tokens(msgs))
            continue
        live.append(_Prompt(i, row, msgs, functions=functions))
    if cfg.query.hard_to_verify and live:
        verdicts = hard_to_verify([p.msgs for p in live], query_teacher, seed=cfg.seed + 7_907)
        for p, hard in zip(live, verdicts):
            acc["judge"].record_in(prompt_tokens(p.msgs))
            if hard is None:
                acc["judge"].record_drop("unclear", prompt_tokens(p.msgs))
            else:
                acc["judge"].record_kept(prompt_tokens(p.msgs))
            if hard:
                prompts.record_drop("hard_to_verify", prompt_tokens(p.msgs))
        live = [p for p, hard in zip(live, verdicts) if not hard]
    if query_teacher is not None and cfg.query.k > 0 and live:
        rates = pass_rates([p.row for p in live], [p.msgs for p in live], query_teacher, k=cfg.query.k,
                           seed=cfg.seed + 7_919)
        kept = []
        for p, rate in zip(live, rates):
            p.pass_rate = rate
            if too_easy(rate, max_pass_rate=cfg.query.max_pass_rate):
                prompts.record_drop("too_easy", prompt_tokens(p.msgs))
            else:
                kept.append(p)
        live = kept
    for p in live:
        p.thinking = thinking_mode(p.msgs, cfg.no_think_fraction, cfg.seed, row_id(p.row, p.index))
    return live


def _sample_and_filter(live: list[_Prompt], teacher: Teacher, cfg: ColdStartCfg, acc: Accounting,
                       decontam: Any | None) -> list[dict[str, Any]]:
    samples: dict[int, list[Response]] = {}
    for mode in (True, False):
        group = [p for p in live if p.thinking == mode]
        if group:
            got = ask(teacher, [p.msgs for p in group], cfg.n, thinking=mode, seed=cfg.seed,
                      functions=[p.functions for p in group])
            if len(got) != len(group):
                raise FlowError(f"teacher {teacher.name}: {len(got)} answers for {len(group)} prompts")
            samples.update({p.index: resp for p, resp in zip(group, got)})
    out = []
    for p in live:
        kept = _select(p, samples[p.index], teacher, cfg, acc["candidates"], decontam)
        if kept:
            acc["prompts"].record_kept(prompt_tokens(p.msgs))
        else:
            acc["prompts"].record_drop("no_valid_candidate", prompt_tokens(p.msgs))
        out += kept
    return out


def _select(p: _Prompt, candidates: list[Response], teacher: Teacher, cfg: ColdStartCfg, cands: StepStats,
            decontam: Any | None) -> list[dict[str, Any]]:
    """Check every candidate (each one counted by reason), keep the first accepted distinct ones."""
    kept: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for resp in candidates:
        tokens = response_tokens(resp)
        cands.record_in(tokens)
        reason = check_response(p.row, resp, cfg.filters, thinking=p.thinking, decontam=decontam)
        key = (" ".join(str(resp.get("reasoning") or "").split()), " ".join(str(resp.get("content") or "").split()))
        if reason is None and key in seen:
            reason = "duplicate"
        if reason is None and len(kept) >= cfg.keep_per_prompt:
            reason = "surplus"
        if reason:
            cands.record_drop(reason, tokens)
            continue
        seen.add(key)
        cands.record_kept(tokens)
        kept.append(_sft_row(p, resp, teacher, len(kept)))
    return kept


def _sft_row(p: _Prompt, resp: Response, teacher: Teacher, k: int) -> dict[str, Any]:
    row: dict[str, Any] = {"id": f"{row_id(p.row, p.index)}#{k}", "source": "coldstart", "teacher": teacher.name,
                           "thinking": p.thinking,
                           "messages": with_mode(p.msgs, p.thinking) + [assistant_message(resp)]}
    if resp.get("trajectory") is not None:  # a teacher with tools: its calls and their answers are trained on too
        row.update(messages=with_mode(p.msgs, p.thinking) + resp["trajectory"],
                   tools=getattr(teacher, "tool_schemas", None), tool_calls=resp.get("tool_calls", 0))
    elif p.functions:  # a function-calling row: the reply's calls as structured calls, its functions listed
        row.update(messages=with_mode(p.msgs, p.thinking) + [call_message(resp, p.functions)], tools=p.functions)
    row.update({key: p.row[key] for key in META_KEYS if key in p.row})
    if p.pass_rate is not None:
        row["no_think_pass_rate"] = p.pass_rate
    return row

