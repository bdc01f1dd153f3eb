"""Multi-turn prompts (`flowlm.post.multiturn`): self-talk and synthetic context with scripted models, each drop
reason accounted for, and delta pairs built on the grown rows' last turn; `flowlm post multiturn` itself runs on
real checkpoints in tests/tools/test_simfc_cli.py."""

from __future__ import annotations

import json

import pytest

from flowlm.post.delta import PairCfg, build_delta_pairs
from flowlm.post.multiturn import MultiTurnCfg, build_multiturn, parse_context
from tests.post.test_simfc import Scripted, reply

ROW = {"id": "q1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 6 * 7?"}],
       "dataset": "math", "ground_truth": "42"}


def answerer(replies=None):
    """Answers the k-th assistant turn of a conversation with `replies[k]`."""
    replies = replies or ["It is 42.", "Yes: 6 * 7 = 42 and 7 * 6 = 42."]
    return Scripted("asst", lambda m, f, t: reply(replies[sum(x["role"] == "assistant" for x in m)]))


def talker(followups=("Is 7 * 6 the same?", "Why?"), context=None):
    def script(msgs, fns, thinking):
        text = msgs[-1]["content"]
        if text.startswith("Here is a conversation"):
            return reply(followups[text.count("\nAssistant:") - 1])  # the k-th follow-up after k answers
        return reply(context if context is not None else json.dumps([
            {"role": "user", "content": "I am practising my times tables."},
            {"role": "assistant", "content": "Great, ask me anything."}]))
    return Scripted("sim", script)


def test_self_talk_goes_on_after_the_prompt_and_drops_the_answer_check():
    sim = talker()
    rows, acc = build_multiturn([ROW], answerer(), sim, MultiTurnCfg(turns=3))
    [row] = rows
    assert [(m["role"], m["content"]) for m in row["messages"]] == [
        ("system", "Be brief."), ("user", "What is 6 * 7?"), ("assistant", "It is 42."), ("user", "Is 7 * 6 the same?"),
        ("assistant", "Yes: 6 * 7 = 42 and 7 * 6 = 42."), ("user", "Why?")]
    assert row["source"] == "self_talk" and row["origin"] == "q1" and "ground_truth" not in row
    assert "User: What is 6 * 7?\nAssistant: It is 42." in sim.asked[0][0][0]["content"]  # the transcript it read
    assert acc["prompts"].kept.docs == 1


def test_synthetic_context_comes_before_the_prompt_which_keeps_its_answer_check():
    rows, _ = build_multiturn([ROW], None, talker(), MultiTurnCfg(method="synthetic_context"))
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant", "user"]
    assert rows[0]["messages"][-1]["content"] == "What is 6 * 7?" and rows[0]["ground_truth"] == "42"


@pytest.mark.parametrize("method,asst,sim,reason", [
    ("self_talk", answerer(["", ""]), talker(), "assistant_error"),
    ("self_talk", answerer(["<think>loop"] * 2), talker(), "assistant_error"),
    ("self_talk", answerer(), talker(followups=("",) * 2), "bad_followup"),
    ("self_talk", answerer(), talker(followups=("word " * 400,) * 2), "bad_followup"),
    ("synthetic_context", None, talker(context="Earlier we talked."), "bad_context"),
    ("synthetic_context", None, talker(context=json.dumps([{"role": "assistant", "content": "Hi"},
                                                           {"role": "user", "content": "Hi"}])), "bad_context"),
    ("synthetic_context", None, talker(context=json.dumps([{"role": "user", "content": "Hi"}])), "bad_context"),
])
def test_a_prompt_that_cannot_grow_is_dropped_with_its_reason(method, asst, sim, reason):
    rows, acc = build_multiturn([ROW, {"id": "bad"}], asst, sim, MultiTurnCfg(method=method))
    assert rows == [] and dict((k, v.docs) for k, v in acc["prompts"].dropped.items()) == {reason: 1, "bad_prompt": 1}


def test_follow_ups_near_eval_items_are_dropped_as_contaminated():
    from flowlm.data.decontam import DecontamCfg, Decontaminator

    item = "Is seven times six the same as six times seven when you multiply the two whole numbers together?"
    deco = Decontaminator([{"benchmark": "b", "item_id": "1", "question": item, "answer": "yes"}], DecontamCfg(mode="posttrain"))
    _, acc = build_multiturn([ROW], answerer(), talker(followups=(item,)), MultiTurnCfg(), decontam=deco)
    assert acc["prompts"].dropped.keys() == {"contaminated"}


def test_delta_pairs_on_a_grown_row_prefer_on_its_last_turn():
    """The seed's rule: a multi-turn preference is built on the last turn only. The pair's prompt is the whole
    grown conversation; both sides answer its last user turn."""
    rows, _ = build_multiturn([ROW], answerer(), talker(), MultiTurnCfg())
    strong = Scripted("strong", lambda m, f, t: reply("Yes, multiplication is commutative: both are 42."))
    weak = Scripted("weak", lambda m, f, t: reply("No."))
    pairs, _ = build_delta_pairs(rows, strong, weak, PairCfg(thinking=False, n_chosen=1))
    [pair] = pairs
    assert [m["role"] for m in pair["prompt"]] == ["system", "user", "assistant", "user"]
    assert pair["prompt"][-1]["content"].startswith("Is 7 * 6 the same?")
    assert pair["chosen"][0]["content"].startswith("Yes") and pair["rejected"][0]["content"] == "No."


def test_context_parsing():
    good = json.dumps([{"role": "user", "content": " a "}, {"role": "assistant", "content": "b"}])
    assert parse_context(f"```json\n{good}\n```", 1, 10) == [{"role": "user", "content": "a"},
                                                             {"role": "assistant", "content": "b"}]
    assert parse_context(good, 2, 10) is None and parse_context("[1, 2]", 1, 10) is None
    assert parse_context(json.dumps([{"role": "user", "content": "x " * 20}, {"role": "assistant", "content": "b"}]),
                         1, 10) is None
