"""Preference pairs for DPO: delta-learning pairs (strong vs weak) and judge pairs (best vs worst of a pool).

OLMo 3 (§4.3, §5.3.1) found that after SFT on a strong teacher's traces, more imitation of that teacher
hurts (SFT on the chosen side alone: 70.3 -> 64.5) while DPO against a *weak* model's answers to the
same prompts helps (70.3 -> 72.9): what matters is the capability gap between chosen and rejected
(the "delta"), not the absolute quality of the chosen response.

- `build_delta_pairs(rows, strong, weak, cfg)`: chosen = the first of `n_chosen` strong candidates
  that passes the SFT filters (`flowlm.post.filters.check_response`: accuracy where the row is
  verifiable, repetition, guessing, think/summary agreement, language mixing, contamination);
  rejected = the weak teacher's answer, deliberately unfiltered, because its errors, hallucinations
  and broken logic are the signal. A pair whose sides are identical carries no signal and is
  skipped; `require_rejected_wrong` also skips pairs whose rejected answer verifies as correct. It is
  off by default: OLMo 3's delta learning does not require it (a correct but weaker, sloppier answer
  still teaches the gap), and demanding it would bias the prompts toward those the weak model fails.
- `build_judge_pairs(rows, pool, judge)`: every pool member answers, a judge scores each answer, the
  best filtered answer is chosen and the worst answer is rejected ("delta-aware" judging: the pool
  should deliberately include weak models, or the best and worst differ too little). The default
  judge is the row's verifier score; `named_verifier_judge("judge")` (LLM-as-judge) or
  `named_verifier_judge("reward_model", reward_model=PATH)` use the existing verifiers.

Instruct pairs (`thinking=False`) are length-controlled (OLMo 3 §5.3.1: chosen and rejected at most
`max_length_diff` tokens apart; judge pairs fall back to a shorter qualified chosen answer first).
Think pairs are not length-filtered. Multi-turn rows are answered on the last turn only: the prompt is
every message before the final assistant turn, which is replaced (no ambiguity about which turn is
preferred). Output rows are TRL preference rows `{"prompt": [messages], "chosen": [assistant msg],
"rejected": [assistant msg], ...}`, which `flowlm.data.pairs.render_pair` reads. Function-calling rows (their
own `tools`, a `tool_call` ground truth) are answered with their functions listed; both sides hold their
calls as structured `tool_calls`, and the pair row keeps the functions as its `tools` (DPO lists them).
Teachers with tools (`teacher.tools`, tools that run) answer with whole trajectories: each side is the
teacher's calls, the tools' answers and its final reply (the chosen one verified on that reply), the pair row
lists the tools, and DPO's masks label the assistant turns only, never a tool's answer.

Accounting: step `prompts` (pairs written vs prompts dropped by reason) and step `candidates`
(responses sampled vs used in a pair, the rest dropped by filter reason or `unused`), both conserving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import model_validator

from flowlm.config import Strict
from flowlm.data.accounting import TokenCounter, count_tokens
from flowlm.errors import FlowError
from flowlm.post.coldstart import META_KEYS, Accounting, chunks, prompt_tokens, response_tokens, row_id
from flowlm.post.filters import (ResponseFilterCfg, check_response, contaminated, format_problem, has_verifier,
                                 markup_problem, wrong_answer)
from flowlm.post.teachers import (Message, Response, Teacher, ask, assistant_message, call_message, completion_text,
                                  prompt_messages, user_text, with_mode)
from flowlm.rl.rows import row_tools

Judge = Callable[[list[Message], Response, Mapping[str, Any]], float]
"""`judge(prompt_messages, response, row) -> score`; `row` carries the ground truth, when there is one."""


class PairCfg(Strict):
    """Preference-pair construction."""

    thinking: bool = True
    """Think pairs (thinking mode) or Instruct pairs (non-thinking: `/no_think`, empty reasoning)."""
    n_chosen: int = 4
    """Delta pairs: strong candidates per prompt; the first that passes the filters is chosen."""
    n_per_teacher: int = 1
    """Judge pairs: answers per pool member and prompt."""
    require_rejected_wrong: bool = False
    """Delta pairs: skip a pair whose rejected answer verifies as correct (see the module docstring)."""
    max_length_diff: int | None = 100
    """Instruct pairs: chosen and rejected at most this many tokens apart (None: no limit)."""
    min_score_gap: float = 0.0
    """Judge pairs: the chosen score must exceed the rejected one by more than this."""
    seed: int = 0
    """Seed of the teachers' sampling."""
    chunk: int = 256
    """Prompts sampled together."""
    filters: ResponseFilterCfg = ResponseFilterCfg()
    """Filters of the chosen side (the rejected side is never filtered)."""

    @model_validator(mode="after")
    def _check(self) -> PairCfg:
        if self.n_chosen < 1 or self.n_per_teacher < 1 or self.chunk < 1:
            raise ValueError("n_chosen, n_per_teacher and chunk must be >= 1")
        if self.max_length_diff is not None and self.max_length_diff < 0:
            raise ValueError(f"max_length_diff must be >= 0 or None, got {self.max_length_diff}")
        return self


# --- judges ---------------------------------------------------------------------------------------------


def verifier_judge(prompt: list[Message], response: Response, row: Mapping[str, Any]) -> float:
    """The row's own verifier score (0 for a row without verifier tags)."""
    from flowlm.verify import verify_row

    if not has_verifier(row):
        return 0.0
    cols = {**row, "prompt": row["prompt"] if isinstance(row.get("prompt"), str) else user_text(prompt)}
    return verify_row(cols, completion_text(response)).score


def named_verifier_judge(name: str, **options: Any) -> Judge:
    """A judge from a registered verifier (e.g. `judge` = LLM-as-judge, `reward_model`), the row's
    `ground_truth` as its reference and `options` as extra verifier arguments."""
    from flowlm.verify import verify
    from flowlm.verify.rows import row_columns

    def judge(prompt: list[Message], response: Response, row: Mapping[str, Any]) -> float:
        cols = {**row_columns(dict(row)), "prompt": user_text(prompt), **options}
        return verify(name, completion_text(response), row.get("ground_truth"), **cols).score

    return judge


# --- shared pieces --------------------------------------------------------------------------------------


def _same(a: Response, b: Response) -> bool:
    return all(" ".join(str(a.get(k) or "").split()) == " ".join(str(b.get(k) or "").split())
               for k in ("reasoning", "content")) and a.get("trajectory") == b.get("trajectory")


def _length(resp: Response, count: TokenCounter) -> int:
    return count(str(resp.get("reasoning") or "")) + count(str(resp.get("content") or ""))


def _too_far(a: Response, b: Response, cfg: PairCfg, count: TokenCounter) -> bool:
    """Instruct pairs only: are the two answers more than `max_length_diff` tokens apart?"""
    if cfg.thinking or cfg.max_length_diff is None:
        return False
    return abs(_length(a, count) - _length(b, count)) > cfg.max_length_diff


def _pair_row(row: Mapping[str, Any], index: int, msgs: list[Message], chosen: Response, rejected: Response,
              cfg: PairCfg, source: str, *, offered: list[dict[str, Any]] | None = None,
              **extra: Any) -> dict[str, Any]:
    """A TRL preference row. A side is one assistant turn, or, from a teacher with tools (`offered`: their
    schemas), its whole trajectory: the turns that call, the tools' answers, the final reply."""
    functions = row_tools(dict(row))  # a function-calling row: both sides' calls structured, its functions listed

    def side(resp: Response) -> list[Message]:
        if resp.get("trajectory") is not None:
            return [dict(m) for m in resp["trajectory"]]
        return [call_message(resp, functions) if functions else assistant_message(resp)]

    out: dict[str, Any] = {"id": row_id(row, index), "source": source, "thinking": cfg.thinking,
                           "prompt": with_mode(msgs, cfg.thinking),
                           "chosen": side(chosen), "rejected": side(rejected), **extra}
    if functions or offered:
        out["tools"] = functions or offered
    out.update({key: row[key] for key in META_KEYS if key in row})
    return out


def _prompts(part: Sequence[Mapping[str, Any]], start: int, acc: Accounting,
             decontam: Any | None) -> list[tuple[int, Mapping[str, Any], list[Message]]]:
    """Parse the chunk's prompts; bad and contaminated ones are dropped (and counted)."""
    live = []
    for i, row in enumerate(part, start):
        try:
            msgs = prompt_messages(row)
            row_tools(dict(row))
        except ValueError:
            acc["prompts"].record_in(0)
            acc["prompts"].record_drop("bad_prompt", 0)
            continue
        acc["prompts"].record_in(prompt_tokens(msgs))
        text = "\n".join(str(m.get("content") or "") for m in msgs)
        if contaminated(text, decontam):
            acc["prompts"].record_drop("contaminated", prompt_tokens(msgs))
            continue
        live.append((i, row, msgs))
    return live


def _sample(teacher: Teacher, live: list[tuple[int, Mapping[str, Any], list[Message]]], n: int,
            cfg: PairCfg) -> list[list[Response]]:
    """`n` answers of `teacher` to each live prompt (a function-calling row's prompt lists its functions)."""
    msgs = [m for _, _, m in live]
    functions = [row_tools(dict(row)) for _, row, _ in live]
    got = ask(teacher, msgs, n, thinking=cfg.thinking, seed=cfg.seed, functions=functions) if msgs else []
    if len(got) != len(msgs):
        raise FlowError(f"teacher {teacher.name}: {len(got)} answers for {len(msgs)} prompts")
    return got


def _offered(*teachers: Teacher) -> list[dict[str, Any]] | None:
    """The tools the teachers' prompts listed (`ModelTeacher(tools=...)`), which a pair's prompt must list too;
    teachers offering different tools would make a pair whose sides saw different prompts: refused."""
    offered = [getattr(t, "tool_schemas", None) for t in teachers]
    if any(o != offered[0] for o in offered):
        raise FlowError("preference pairs: the teachers offer different tools; both sides must see the same prompt")
    return offered[0]


# --- delta-learning pairs ---------------------------------------------------------------------------------


def build_delta_pairs(rows: Iterable[Mapping[str, Any]], strong: Teacher, weak: Teacher, cfg: PairCfg | None = None,
                      *, decontam: Any | None = None, count: TokenCounter = count_tokens,
                      ) -> tuple[list[dict[str, Any]], Accounting]:
    """Chosen from `strong` (filtered like SFT data), rejected from `weak` (unfiltered), on the same prompts.

    `count` measures the length filter's tokens (default: whitespace words; pass a tokenizer's
    `lambda s: len(tok.encode(s))` for real tokens)."""
    cfg = cfg or PairCfg()
    rows = list(rows)
    acc = Accounting.of("prompts", "candidates")
    out: list[dict[str, Any]] = []
    for start, part in chunks(rows, cfg.chunk):
        live = _prompts(part, start, acc, decontam)
        strong_out = _sample(strong, live, cfg.n_chosen, cfg)
        weak_out = _sample(weak, live, 1, cfg)
        for (i, row, msgs), cands, rej in zip(live, strong_out, weak_out):
            verdicts = _check_chosen(row, cands, cfg, decontam)
            chosen = next((resp for resp, why in verdicts if why is None), None)
            reason = _delta_problem(row, chosen, rej[0] if rej else None, cfg, count)
            for resp, why in verdicts:
                _count(acc, resp, "unpaired" if why is None and reason else why)
            if reason:
                acc["prompts"].record_drop(reason, prompt_tokens(msgs))
                continue
            acc["prompts"].record_kept(prompt_tokens(msgs))
            extra: dict[str, Any] = {"chosen_model": strong.name, "rejected_model": weak.name}
            if has_verifier(row):
                extra["rejected_correct"] = wrong_answer(row, rej[0]) is None
            out.append(_pair_row(row, i, msgs, chosen, rej[0], cfg, "delta", offered=_offered(strong, weak),
                                 **extra))
    acc.check()
    return out, acc


def _check_chosen(row: Mapping[str, Any], cands: list[Response], cfg: PairCfg,
                  decontam: Any | None) -> list[tuple[Response, str | None]]:
    """Each strong candidate with its filter reason; the first that passes (reason None) is the chosen one,
    the later ones are `unused` (not checked: checking costs verifier calls)."""
    out: list[tuple[Response, str | None]] = []
    for resp in cands:
        found = any(why is None for _, why in out)
        out.append((resp, "unused" if found else
                    check_response(row, resp, cfg.filters, thinking=cfg.thinking, decontam=decontam)))
    return out


def _count(acc: Accounting, resp: Response, reason: str | None) -> None:
    """One candidate in; kept (reason None) or dropped by `reason`."""
    st, tokens = acc["candidates"], response_tokens(resp)
    st.record_in(tokens)
    if reason is None:
        st.record_kept(tokens)
    else:
        st.record_drop(reason, tokens)


def _delta_problem(row: Mapping[str, Any], chosen: Response | None, rejected: Response | None, cfg: PairCfg,
                   count: TokenCounter) -> str | None:
    """Why this prompt yields no delta pair, or None."""
    if chosen is None:
        return "no_chosen"
    if rejected is None or format_problem(rejected) == "teacher_error":
        return "rejected_error"
    if markup_problem(rejected):  # unfiltered on purpose, but it must still read back as one assistant turn
        return "rejected_markup"
    if _same(chosen, rejected):
        return "identical"
    if cfg.require_rejected_wrong and has_verifier(row) and wrong_answer(row, rejected) is None:
        return "rejected_correct"
    if _too_far(chosen, rejected, cfg, count):
        return "length_diff"
    return None


# --- judge pairs -------------------------------------------------------------------------------------------


def build_judge_pairs(rows: Iterable[Mapping[str, Any]], pool: Sequence[Teacher], judge: Judge | None = None,
                      cfg: PairCfg | None = None, *, decontam: Any | None = None, count: TokenCounter = count_tokens,
                      ) -> tuple[list[dict[str, Any]], Accounting]:
    """Best (filtered) vs worst answer of a `pool` of teachers, as scored by `judge` (default: the row's
    verifier score, `verifier_judge`)."""
    if not pool:
        raise FlowError("build_judge_pairs: the pool needs at least one teacher")
    cfg, judge = cfg or PairCfg(), judge or verifier_judge
    rows = list(rows)
    acc = Accounting.of("prompts", "candidates")
    out: list[dict[str, Any]] = []
    for start, part in chunks(rows, cfg.chunk):
        live = _prompts(part, start, acc, decontam)
        answers = [_sample(t, live, cfg.n_per_teacher, cfg) for t in pool]
        for j, (i, row, msgs) in enumerate(live):
            cands = [(t.name, resp) for t, per_prompt in zip(pool, answers) for resp in per_prompt[j]]
            pair, reason, unused = _judge_pair(row, msgs, cands, judge, cfg, decontam, count)
            for resp, why in unused:
                _count(acc, resp, why)
            if pair is None:
                acc["prompts"].record_drop(reason, prompt_tokens(msgs))
                continue
            (c_name, chosen, c_score), (r_name, rejected, r_score) = pair
            for resp in (chosen, rejected):
                _count(acc, resp, None)
            acc["prompts"].record_kept(prompt_tokens(msgs))
            out.append(_pair_row(row, i, msgs, chosen, rejected, cfg, "judge", offered=_offered(*pool),
                                 chosen_model=c_name,
                                 rejected_model=r_name, chosen_score=c_score, rejected_score=r_score))
    acc.check()
    return out, acc


def _judge_pair(row: Mapping[str, Any], msgs: list[Message], cands: list[tuple[str, Response]], judge: Judge,
                cfg: PairCfg, decontam: Any | None, count: TokenCounter) -> tuple[Any, str, list[tuple[Response, str]]]:
    """((chosen), (rejected)) as (model, response, score), or None with the reason; plus the unused
    candidates with why each is not in the pair.

    Rejected: the lowest score (ties: one that fails the filters, then the later pool member, so a pool
    listed strong-to-weak rejects the weak model's answer). Chosen: the highest score among the answers
    that pass the filters, more than `min_score_gap` above the rejected one and not identical to it."""
    why: dict[int, str] = {}
    scored = []
    for k, (name, resp) in enumerate(cands):
        problem = format_problem(resp)
        if problem in ("teacher_error", "malformed_markup"):  # nothing to judge, or no readable turn
            why[k] = problem
            continue
        reason = check_response(row, resp, cfg.filters, thinking=cfg.thinking, decontam=decontam)
        if reason:
            why[k] = reason
        scored.append((float(judge(msgs, resp, row)), k, name, resp, reason))
    if len(scored) < 2:
        return None, "too_few_answers", [(r, why.get(k, "unpaired")) for k, (_, r) in enumerate(cands)]
    worst = min(scored, key=lambda s: (s[0], s[4] is None, -s[1]))
    others = sorted((s for s in scored if s is not worst), key=lambda s: (-s[0], s[1]))
    eligible = [s for s in others if s[4] is None and s[0] - worst[0] > cfg.min_score_gap and not _same(s[3], worst[3])]
    # Instruct pairs: the best-scored chosen within the length limit (OLMo 3 prefers a shorter qualified answer).
    best = next((s for s in eligible if not _too_far(s[3], worst[3], cfg, count)), None)
    if best is None:
        reason = "length_diff" if eligible else ("no_chosen" if all(s[4] for s in others) else "tie")
        return None, reason, [(r, why.get(k, "unpaired")) for k, (_, r) in enumerate(cands)]
    unused = [(r, why.get(k, "unused")) for k, (_, r) in enumerate(cands) if k not in (best[1], worst[1])]
    return ((best[2], best[3], best[0]), (worst[2], worst[3], worst[0])), "", unused
