"""Cold-start rejection sampling: kept rows are right and clean, every drop is counted, accounting conserves."""

from __future__ import annotations

import pytest

from flowlm.data.decontam import DecontamCfg, Decontaminator
from flowlm.errors import ConfigError, FlowError
from flowlm.post.coldstart import Accounting, ColdStartCfg, build_coldstart
from flowlm.post.filters import QueryFilterCfg, ResponseFilterCfg, check_response
from flowlm.post.procedural import ProceduralTeacher, WeakProceduralTeacher
from flowlm.post.teachers import completion_text
from flowlm.verify import verify_row


def _response(row: dict) -> dict:
    msg = row["messages"][-1]
    return {"reasoning": msg["reasoning_content"], "content": msg["content"]}


def test_noisy_teacher_kept_rows_are_right_and_drops_are_counted(rows):
    teacher = ProceduralTeacher.from_rows(rows, error_rate=0.6)
    out, acc = build_coldstart(rows, teacher, ColdStartCfg(n=4, keep_per_prompt=2))
    p, c = acc["prompts"], acc["candidates"]
    assert p.inp.docs == len(rows) and c.inp.docs == 4 * len(rows)
    assert p.conserved() and c.conserved() and c.kept.docs == len(out)
    for reason in ("wrong_answer", "repetition", "guess", "think_summary_mismatch", "language_mix"):
        assert c.dropped[reason].docs > 0, reason  # every kind of defect was met and counted
    assert c.dropped["duplicate"].docs > 0  # clean candidates of one item are identical
    by_prompt: dict[str, int] = {}
    for row in out:
        assert row["thinking"] and row["source"] == "coldstart" and row["teacher"] == "procedural"
        assert verify_row(row, completion_text(_response(row))).score == 1.0
        assert check_response(row, _response(row), ResponseFilterCfg(), thinking=True) is None
        base = row["id"].split("#")[0]
        by_prompt[base] = by_prompt.get(base, 0) + 1
    assert max(by_prompt.values()) <= 2
    assert p.kept.docs == len(by_prompt)
    assert p.kept.docs + sum(d.docs for d in p.dropped.values()) == len(rows)
    again, _ = build_coldstart(rows, teacher, ColdStartCfg(n=4, keep_per_prompt=2))
    assert again == out  # deterministic


def test_a_prompt_without_any_good_candidate_is_dropped(rows):
    teacher = ProceduralTeacher.from_rows(rows, error_rate=1.0, noise=("wrong_answer",))
    out, acc = build_coldstart(rows[:5], teacher, ColdStartCfg(n=3))
    assert out == [] and acc["prompts"].dropped["no_valid_candidate"].docs == 5
    assert acc["candidates"].dropped["wrong_answer"].docs == 15


def test_query_filter_drops_prompts_answered_without_reasoning(rows):
    strong = ProceduralTeacher.from_rows(rows)
    # A weak model that is always right is a model for which every prompt is too easy...
    always, never = (WeakProceduralTeacher.from_rows(rows, skill=s) for s in (1.0, 0.0))
    out, acc = build_coldstart(rows, strong, ColdStartCfg(n=1), query_teacher=always)
    assert out == [] and acc["prompts"].dropped["too_easy"].docs == len(rows)
    # ...one that is never right finds none too easy, and without a query teacher there is no such filter.
    out, acc = build_coldstart(rows, strong, ColdStartCfg(n=1), query_teacher=never)
    assert len(out) == len(rows) and "too_easy" not in acc["prompts"].dropped
    assert all(r["no_think_pass_rate"] == 0.0 for r in out)
    mixed, acc = build_coldstart(rows, strong, ColdStartCfg(n=1, query=QueryFilterCfg(k=4, max_pass_rate=0.5)),
                                 query_teacher=WeakProceduralTeacher.from_rows(rows, skill=0.8))
    assert 0 < acc["prompts"].dropped["too_easy"].docs < len(rows)
    assert all(r["no_think_pass_rate"] < 0.5 for r in mixed)


class Judge:
    """A query teacher that answers the hard-to-verify question by the prompt's content (yes for a poem
    request, gibberish for a 'maybe' marker, no otherwise) and every other prompt wrongly."""

    name = "judge"

    def __init__(self):
        self.asked = []

    def sample(self, prompts, n, *, thinking, seed, functions=None):
        out = []
        for msgs in prompts:
            text = msgs[-1]["content"]
            self.asked.append((text, thinking))
            if text.startswith("Read the question below."):
                said = "Yes." if "poem" in text else ("Hmm, hard to say." if "maybe" in text else "no")
            else:
                said = "The answer is 0."
            out.append([{"reasoning": "", "content": said, "finish_reason": "stop"}] * n)
        return out


def test_the_query_teacher_judges_prompts_hard_to_verify_and_every_verdict_is_counted(rows):
    rows = [dict(r, messages=[{"role": "user", "content": r["messages"][0]["content"] + extra}])
            for r, extra in zip(rows[:6], ["", " Then write a poem about it.", "", " maybe", "", ""])]
    judge = Judge()
    cfg = ColdStartCfg(n=1, query=QueryFilterCfg(hard_to_verify=True))
    out, acc = build_coldstart(rows, ProceduralTeacher.from_rows(rows), cfg, query_teacher=judge)
    assert acc["prompts"].dropped["hard_to_verify"].docs == 1 and "too_easy" not in acc["prompts"].dropped
    assert acc["judge"].inp.docs == 6 and acc["judge"].kept.docs == 5 and acc["judge"].dropped["unclear"].docs == 1
    assert len(out) == 5 and not any("poem" in r["messages"][0]["content"] for r in out)  # 'maybe' stays
    asked = [(t, thinking) for t, thinking in judge.asked if t.startswith("Read the question below.")]
    assert len(asked) == 6 and not any(thinking for _, thinking in asked)  # once per prompt, without reasoning
    assert "Question:\n" + rows[1]["messages"][0]["content"] in asked[1][0]
    with pytest.raises(FlowError, match="hard_to_verify needs a model"):
        build_coldstart(rows, ProceduralTeacher.from_rows(rows), cfg)
    with pytest.raises(FlowError, match="hard_to_verify needs a model"):
        build_coldstart(rows, ProceduralTeacher.from_rows(rows), cfg, query_teacher=ProceduralTeacher.from_rows(rows))


def test_unverifiable_and_bad_prompts(rows):
    teacher = ProceduralTeacher.from_rows(rows)
    plain = [{"prompt": rows[0]["messages"][0]["content"]}, {"messages": "oops"}, rows[1]]
    out, acc = build_coldstart(plain, teacher, ColdStartCfg(n=1))
    assert len(out) == 1 and acc["prompts"].dropped["unverifiable"].docs == 1
    assert acc["prompts"].dropped["bad_prompt"].docs == 1
    out, _ = build_coldstart(plain[:1], teacher, ColdStartCfg(n=1, query=QueryFilterCfg(require_verifier=False)))
    assert len(out) == 1  # kept unchecked: nothing to verify against


def test_both_modes(rows):
    teacher = ProceduralTeacher.from_rows(rows)
    out, _ = build_coldstart(rows, teacher, ColdStartCfg(n=1, no_think_fraction=0.5, seed=1))
    modes = [r["thinking"] for r in out]
    assert 0 < modes.count(False) < len(out)
    for row in out:
        user, answer = row["messages"][0]["content"], row["messages"][-1]
        if row["thinking"]:
            assert not user.endswith("/no_think") and answer["reasoning_content"]
        else:  # Qwen3 mode fusion: the switch in the user turn, an empty think trace, the answer checked
            assert user.endswith(" /no_think") and answer["reasoning_content"] == ""
            assert verify_row(row, completion_text(_response(row))).score == 1.0
    # A prompt that already asks for /no_think is answered that way whatever the fraction.
    forced = [{**rows[0], "messages": [{"role": "user", "content": rows[0]["messages"][0]["content"] + " /no_think"}]}]
    out, _ = build_coldstart(forced, teacher, ColdStartCfg(n=1))
    assert not out[0]["thinking"] and out[0]["messages"][0]["content"].count("/no_think") == 1


def test_contaminated_prompts_are_dropped(rows):
    wp = next(r for r in rows if r["task"] == "word_problem")
    deco = Decontaminator([{"benchmark": "bench", "item_id": "1", "question": wp["messages"][0]["content"],
                            "answer": ""}], DecontamCfg(mode="posttrain"))
    out, acc = build_coldstart(rows, ProceduralTeacher.from_rows(rows), ColdStartCfg(n=1), decontam=deco)
    assert acc["prompts"].dropped["contaminated"].docs == 1
    assert wp["id"] not in {r["id"].split("#")[0] for r in out}


def test_sft_rows_render_with_the_chat_template(rows, tok):
    from flowlm.model.tokenizer import render_chat

    out, _ = build_coldstart(rows[:6], ProceduralTeacher.from_rows(rows), ColdStartCfg(n=1, no_think_fraction=0.5))
    for row in out:
        ids, mask = render_chat(tok, row["messages"])
        text = tok.decode([t for t, m in zip(ids, mask) if m])
        assert text.startswith("<think>") and row["messages"][-1]["content"] in text


def test_config_and_accounting_checks():
    with pytest.raises(ValueError):
        ColdStartCfg(n=0)
    with pytest.raises(ValueError):
        ColdStartCfg(no_think_fraction=1.5)
    from flowlm.config import validate

    with pytest.raises(ConfigError, match="unknown key"):
        validate(ColdStartCfg, {"filters": {"max_repetitio": 1}}, "test")
    acc = Accounting.of("prompts")
    acc["prompts"].record_in(3)
    with pytest.raises(FlowError, match="conserve"):
        acc.check()
    assert "prompts" in acc.table()
