"""Preference pairs: delta learning (strong vs weak) and judge pairs (best vs worst of a pool)."""

from __future__ import annotations

import pytest

from flowlm.errors import FlowError
from flowlm.post.delta import PairCfg, build_delta_pairs, build_judge_pairs, named_verifier_judge, verifier_judge
from flowlm.post.filters import ResponseFilterCfg, check_response
from flowlm.post.procedural import ProceduralTeacher, WeakProceduralTeacher
from flowlm.post.teachers import completion_text
from flowlm.verify import verify_row


def _resp(msg: dict) -> dict:
    return {"reasoning": msg["reasoning_content"], "content": msg["content"]}


class Fixed:
    """A teacher answering every prompt with the same responses (hand-made pairs)."""

    def __init__(self, name: str, *responses: dict) -> None:
        self.name, self.responses = name, [{"finish_reason": "stop", **r} for r in responses]

    def sample(self, prompts, n, *, thinking, seed):
        return [[self.responses[i % len(self.responses)] for i in range(n)] for _ in prompts]


def test_delta_pairs_chosen_verified_rejected_unfiltered(rows):
    strong = ProceduralTeacher.from_rows(rows, error_rate=0.5)
    weak = WeakProceduralTeacher.from_rows(rows)
    pairs, acc = build_delta_pairs(rows, strong, weak, PairCfg(n_chosen=4))
    assert acc["prompts"].conserved() and acc["candidates"].conserved()
    assert acc["prompts"].kept.docs == len(pairs) == acc["candidates"].kept.docs
    assert len(pairs) >= len(rows) - 3
    for pair in pairs:
        chosen, rejected = _resp(pair["chosen"][0]), _resp(pair["rejected"][0])
        assert verify_row(pair, completion_text(chosen)).score == 1.0
        assert check_response(pair, chosen, ResponseFilterCfg(), thinking=True) is None
        assert pair["prompt"][-1]["role"] == "user" and pair["chosen"][0]["role"] == "assistant"
        assert pair["chosen_model"] == "procedural" and pair["rejected_model"] == "weak"
        assert pair["rejected_correct"] == (verify_row(pair, completion_text(rejected)).score == 1.0)
    # Rejected answers are not filtered: short guesses and wrong answers stay in.
    assert any(check_response(p, _resp(p["rejected"][0]), ResponseFilterCfg(), thinking=True) for p in pairs)
    assert any(not p["rejected_correct"] for p in pairs) and any(p["rejected_correct"] for p in pairs)
    strict, acc = build_delta_pairs(rows, strong, weak, PairCfg(require_rejected_wrong=True))
    assert not any(p["rejected_correct"] for p in strict)
    assert acc["prompts"].dropped["rejected_correct"].docs == sum(p["rejected_correct"] for p in pairs)


def test_identical_and_failed_chosen_are_skipped(rows):
    gold = {"reasoning": rows[0]["solution"], "content": f"The answer is \\boxed{{{rows[0]['answer']}}}."}
    same, acc = build_delta_pairs(rows[:1], Fixed("a", gold), Fixed("b", gold))
    assert same == [] and acc["prompts"].dropped["identical"].docs == 1
    assert acc["candidates"].dropped["unpaired"].docs == 1
    bad = {**gold, "content": "The answer is \\boxed{-999}."}
    none, acc = build_delta_pairs(rows[:1], Fixed("a", bad), Fixed("b", gold), PairCfg(n_chosen=2))
    assert none == [] and acc["prompts"].dropped["no_chosen"].docs == 1
    assert acc["candidates"].dropped["wrong_answer"].docs == 2


def test_length_filter_applies_to_instruct_pairs_only():
    row = {"prompt": "Tell me about tea."}
    long = {"reasoning": "", "content": " ".join(f"word{i}" for i in range(150))}
    short = {"reasoning": "", "content": "Tea is a drink."}
    cfg = PairCfg(thinking=False, filters=ResponseFilterCfg(max_repetition=None))
    pairs, acc = build_delta_pairs([row], Fixed("s", long), Fixed("w", short), cfg)
    assert pairs == [] and acc["prompts"].dropped["length_diff"].docs == 1
    unlimited = cfg.model_copy(update={"max_length_diff": None})
    pairs, _ = build_delta_pairs([row], Fixed("s", long), Fixed("w", short), unlimited)
    assert len(pairs) == 1 and pairs[0]["prompt"][-1]["content"].endswith("/no_think")
    assert pairs[0]["chosen"][0]["reasoning_content"] == ""
    # The length is whatever `count` says: at one "token" per 50 characters the two are ~20 apart.
    pairs, _ = build_delta_pairs([row], Fixed("s", long), Fixed("w", short), cfg, count=lambda s: len(s) // 50)
    assert len(pairs) == 1
    think = PairCfg(thinking=True, filters=ResponseFilterCfg(max_repetition=None, min_reasoning_words=None))
    long_t = {"reasoning": long["content"], "content": "Tea."}
    pairs, _ = build_delta_pairs([row], Fixed("s", long_t), Fixed("w", short), think)
    assert len(pairs) == 1  # Think pairs are not length-filtered


def test_multi_turn_pairs_prefer_the_last_turn_only():
    chat = [{"role": "user", "content": "Hi, I like tea."}, {"role": "assistant", "content": "Nice!"},
            {"role": "user", "content": "Which tea is strongest?"}, {"role": "assistant", "content": "old answer"}]
    good = {"reasoning": "", "content": "Black tea usually has the most caffeine."}
    meh = {"reasoning": "", "content": "Tea."}
    pairs, _ = build_delta_pairs([{"id": "mt", "messages": chat}], Fixed("s", good), Fixed("w", meh),
                                 PairCfg(thinking=False))
    (pair,) = pairs
    assert pair["prompt"] == [*chat[:2], {"role": "user", "content": "Which tea is strongest? /no_think"}]
    assert pair["chosen"][0]["content"] == good["content"] and pair["rejected"][0]["content"] == "Tea."
    assert len(pair["chosen"]) == len(pair["rejected"]) == 1 and pair["id"] == "mt"


def test_judge_pairs_best_vs_worst(rows):
    pool = [ProceduralTeacher.from_rows(rows, error_rate=0.3), WeakProceduralTeacher.from_rows(rows)]
    pairs, acc = build_judge_pairs(rows, pool, cfg=PairCfg(n_per_teacher=2))
    assert acc["prompts"].conserved() and acc["candidates"].conserved()
    assert acc["candidates"].inp.docs == 4 * len(rows) and acc["candidates"].kept.docs == 2 * len(pairs)
    assert len(pairs) > len(rows) // 2
    for pair in pairs:
        assert pair["chosen_score"] > pair["rejected_score"]
        assert verify_row(pair, completion_text(_resp(pair["chosen"][0]))).score == pair["chosen_score"] == 1.0
        assert check_response(pair, _resp(pair["chosen"][0]), ResponseFilterCfg(), thinking=True) is None
    assert {p["rejected_model"] for p in pairs} >= {"weak"}
    with pytest.raises(FlowError):
        build_judge_pairs(rows, [])


def test_judge_pairs_with_a_custom_judge_and_the_length_filter():
    row = {"prompt": "Describe the sea."}
    answers = [{"reasoning": "", "content": "The sea is " + "very " * n + "big."} for n in (1, 40, 200)]
    pool = [Fixed(f"m{i}", a) for i, a in enumerate(answers)]

    def longer_is_better(prompt, response, row):  # a length-biased judge, as GPT judges tend to be
        assert prompt[-1]["role"] == "user" and "prompt" in row
        return float(len(response["content"]))

    cfg = PairCfg(thinking=False, filters=ResponseFilterCfg(max_repetition=None))
    pairs, acc = build_judge_pairs([row], pool, longer_is_better, cfg)
    # The best answer is 200 words longer than the worst: the best one within 100 tokens is chosen instead.
    (pair,) = pairs
    assert pair["chosen_model"] == "m1" and pair["rejected_model"] == "m0"
    assert acc["candidates"].dropped["unused"].docs == 1
    pairs, acc = build_judge_pairs([row], pool, lambda p, r, row: 0.5, cfg)
    assert pairs == [] and acc["prompts"].dropped["tie"].docs == 1


def test_verifier_judges(rows):
    row = rows[0]
    right = {"reasoning": "", "content": f"\\boxed{{{row['answer']}}}"}
    assert verifier_judge(row["messages"], right, row) == 1.0
    assert verifier_judge(row["messages"], {"reasoning": "", "content": "\\boxed{x}"}, row) == 0.0
    assert verifier_judge([{"role": "user", "content": "hi"}], right, {"prompt": "hi"}) == 0.0
    judge = named_verifier_judge("math")
    assert judge(row["messages"], right, {"ground_truth": row["answer"]}) == 1.0


def test_pairs_render_for_dpo(rows, tok):
    from flowlm.data.pairs import render_pair

    pairs, _ = build_delta_pairs(rows[:4], ProceduralTeacher.from_rows(rows), WeakProceduralTeacher.from_rows(rows))
    plain, _ = build_delta_pairs(rows[:4], ProceduralTeacher.from_rows(rows), WeakProceduralTeacher.from_rows(rows),
                                 PairCfg(thinking=False))
    for pair in pairs + plain:
        out = render_pair(tok, pair)
        for side in ("chosen", "rejected"):
            ids, mask = out[side]
            answer = tok.decode([t for t, m in zip(ids, mask) if m])
            assert answer.startswith("<think>") and pair[side][0]["content"] in answer
        assert out["chosen"][0][: out["chosen"][1].index(1)] == out["rejected"][0][: out["rejected"][1].index(1)]


def test_a_rejected_answer_with_stray_think_tags_is_dropped_and_counted():
    """Model output is untrusted: a weak answer that opened <think> several times cannot be read back as
    one assistant turn, so it makes no pair (counted as `rejected_markup`); the rows written all read back."""
    from flowlm.data.chat import pair_row
    from flowlm.post.delta import build_delta_pairs
    from flowlm.post.procedural import ProceduralTeacher, builtin_rows

    rows = builtin_rows(4)

    class Garbled:
        name = "garbled"

        def sample(self, prompts, n, *, thinking, seed):
            out = []
            for i, _ in enumerate(prompts):
                bad = {"reasoning": "x", "content": "The\n<think>\n<think>\n1", "finish_reason": "stop"}
                ok = {"reasoning": "some steps", "content": "The answer is 7.", "finish_reason": "stop"}
                out.append([bad if i % 2 == 0 else ok] * n)
            return out

    pairs, acc = build_delta_pairs(rows, ProceduralTeacher.from_rows(rows), Garbled())
    assert acc["prompts"].dropped["rejected_markup"].docs == 2 and len(pairs) == 2
    for p in pairs:
        assert pair_row(p)["rejected"][0]["content"] == "The answer is 7."
