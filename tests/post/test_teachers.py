"""Teachers: message handling, the procedural teachers' determinism and defects, and a tiny ModelTeacher."""

from __future__ import annotations

import pytest

from flowlm.data import tasks
from flowlm.errors import FlowError
from flowlm.post import procedural as P
from flowlm.post import teachers as T
from flowlm.post.filters import ResponseFilterCfg, check_response
from flowlm.verify import verify_row


def test_prompt_messages_and_modes():
    assert T.prompt_messages({"prompt": "hi"}) == [{"role": "user", "content": "hi"}]
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
            {"role": "assistant", "content": "old answer"}]
    assert T.prompt_messages({"messages": chat}) == chat[:3]  # the final assistant turn is answered anew
    for bad in ({"messages": "x"}, {"prompt": ""}, {"messages": [{"role": "assistant", "content": "x"}]}, {}):
        with pytest.raises(ValueError):
            T.prompt_messages(bad)
    msgs = [{"role": "user", "content": "2+2?"}]
    assert T.with_mode(msgs, thinking=True) == msgs
    no = T.with_mode(msgs, thinking=False)
    assert no[-1]["content"] == "2+2? /no_think" and msgs[0]["content"] == "2+2?"  # a copy
    assert T.with_mode(no, thinking=False) == no  # never twice
    assert T.wants_no_think(no) and T.user_text(no) == "2+2?"
    # The latest switch in the conversation decides, as in Qwen3's multi-turn mode fusion.
    turns = [{"role": "user", "content": "hi /no_think"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "and now?"}]
    assert T.wants_no_think(turns) and T.with_mode(turns, thinking=False) == turns
    turns[2]["content"] = "/think and now?"
    assert not T.wants_no_think(turns)
    assert T.with_mode(turns, thinking=False)[2]["content"] == "/think and now? /no_think"
    assert not T.wants_no_think([{"role": "user", "content": "a/no_think path"}])


def test_split_reasoning_reads_the_think_block():
    assert T.split_reasoning("<think>\nstep\n</think>\n\nanswer") == \
        {"reasoning": "step", "content": "answer", "finish_reason": "stop"}
    assert T.split_reasoning("step</think>answer")["reasoning"] == "step"  # opening tag in the prompt
    cut = T.split_reasoning("<think>still thinking", "length")
    assert cut == {"reasoning": "still thinking", "content": "", "finish_reason": "length"}
    assert T.split_reasoning("just an answer")["content"] == "just an answer"
    resp = {"reasoning": "r", "content": "c"}
    assert T.split_reasoning(T.completion_text(resp)) == {**resp, "finish_reason": "stop"}
    assert T.assistant_message({"reasoning": "", "content": "c"}) == \
        {"role": "assistant", "content": "c", "reasoning_content": ""}


def test_builtin_rows_are_training_split_and_verifiable(rows):
    assert len(rows) == 24 and len({r["task"] for r in rows}) == 5
    for r in rows:
        assert not tasks.is_heldout(r["messages"][0]["content"])
        gold = f"<think>\n{r['solution']}\n</think>\n\n{P.final_line(r['answer'], r['solution'])}"
        assert verify_row(r, gold).score == 1.0, r
    assert P.builtin_rows(24, seed=0) == rows  # deterministic


def test_procedural_teacher_modes_and_determinism(rows):
    teacher = P.ProceduralTeacher.from_rows(rows)
    prompts = [r["messages"] for r in rows[:5]]
    think = teacher.sample(prompts, 2, thinking=True, seed=0)
    assert [len(x) for x in think] == [2] * 5
    first = think[0][0]
    assert first["reasoning"] == rows[0]["solution"] and "answer is" in first["content"]
    plain = teacher.sample([T.with_mode(p, False) for p in prompts], 1, thinking=False, seed=0)
    assert plain[0][0] == {"reasoning": "", "content": rows[0]["solution"], "finish_reason": "stop"}
    unknown = teacher.sample([[{"role": "user", "content": "What is love?"}]], 3, thinking=True, seed=0)
    assert [r["finish_reason"] for r in unknown[0]] == ["error"] * 3
    with pytest.raises(FlowError):
        P.ProceduralTeacher([], error_rate=2.0)


def test_procedural_noise_is_deterministic_and_each_kind_is_caught(rows):
    """Every defect kind the teacher makes is dropped by the filter meant for it."""
    expected = {"wrong_answer": "wrong_answer", "repetition": "repetition", "guess": "guess",
                "mismatch": "think_summary_mismatch", "language_mix": "language_mix"}
    for kind, reason in expected.items():
        teacher = P.ProceduralTeacher.from_rows(rows, error_rate=1.0, noise=(kind,))
        got = teacher.sample([r["messages"] for r in rows], 1, thinking=True, seed=3)
        for row, (resp,) in zip(rows, got):
            assert check_response(row, resp, ResponseFilterCfg(), thinking=True) == reason, (kind, row["id"], resp)
    noisy = P.ProceduralTeacher.from_rows(rows, error_rate=0.5)
    a = noisy.sample([r["messages"] for r in rows], 4, thinking=True, seed=1)
    assert a == noisy.sample([r["messages"] for r in rows], 4, thinking=True, seed=1)
    assert a != noisy.sample([r["messages"] for r in rows], 4, thinking=True, seed=2)


def test_weak_teacher_is_often_wrong_and_short(rows):
    weak = P.WeakProceduralTeacher.from_rows(rows)
    got = weak.sample([r["messages"] for r in rows], 4, thinking=True, seed=0)
    right = [verify_row(r, T.completion_text(x)).score for r, per in zip(rows, got) for x in per]
    assert 0.05 < sum(right) / len(right) < 0.6
    assert all(len(x["reasoning"].split()) < 40 for per in got for x in per)
    sure = P.WeakProceduralTeacher.from_rows(rows, skill=1.0)
    perfect = sure.sample([rows[0]["messages"]], 2, thinking=False, seed=0)
    assert verify_row(rows[0], T.completion_text(perfect[0][0])).score == 1.0 and perfect[0][0]["reasoning"] == ""


def test_wrong_answer_is_always_wrong():
    import random

    rng = random.Random(0)
    for ans in ("5", "-3", "1, 2, 3", "4, 4, 7", "x"):
        for _ in range(20):
            assert P.wrong_answer(ans, rng) != ans


def test_make_teacher_specs(rows, tmp_path):
    cfg = T.TeacherCfg(error_rate=0.2, skill=0.5)
    assert isinstance(T.make_teacher("procedural", rows, cfg), P.ProceduralTeacher)
    assert T.make_teacher("weak", rows, cfg).skill == 0.5
    with pytest.raises(FlowError, match="not a checkpoint directory"):
        T.make_teacher(str(tmp_path / "nope"), rows, cfg)


def test_model_teacher_on_a_tiny_random_model(tiny_model, tok):
    """The rollout engine behind the protocol: shapes, modes, seeds, parsing (a random model says nonsense)."""
    teacher = T.ModelTeacher(model=tiny_model, tokenizer=tok, temperature=1.0, max_new_tokens=12, max_slots=8)
    prompts = [[{"role": "user", "content": "Compute 2 + 3."}], [{"role": "user", "content": "Solve for x: 2x = 4."}]]
    got = teacher.sample(prompts, 3, thinking=True, seed=5)
    assert [len(x) for x in got] == [3, 3]
    for resp in (r for per in got for r in per):
        assert set(resp) == {"reasoning", "content", "finish_reason"} and resp["finish_reason"] in ("stop", "length")
    assert teacher.sample(prompts, 3, thinking=True, seed=5) == got  # seeded requests reproduce
    plain = teacher.sample(prompts, 1, thinking=False, seed=5)
    # Non-thinking prompts end with the empty think block, so nothing generated is reasoning unless the
    # model itself writes </think>.
    ids = teacher.tokenizer.apply_chat_template(T.with_mode(prompts[0], False), tokenize=False,
                                                add_generation_prompt=True, enable_thinking=False)
    assert ids.endswith("<think>\n\n</think>\n\n") and "/no_think" in ids
    assert len(plain) == 2 and len(plain[0]) == 1
    too_long = [[{"role": "user", "content": "word " * 400}]]
    assert teacher.sample(too_long, 2, thinking=True, seed=0)[0][0]["finish_reason"] == "error"


def test_model_teacher_from_a_checkpoint_directory(tiny_ckpt, rows):
    teacher = T.make_teacher(str(tiny_ckpt), rows, T.TeacherCfg(max_new_tokens=8, max_slots=4))
    assert isinstance(teacher, T.ModelTeacher) and teacher.name == "model" and teacher.stop_ids
    got = teacher.sample([rows[0]["messages"]], 2, thinking=False, seed=0)
    assert len(got[0]) == 2 and all(r["finish_reason"] in ("stop", "length") for r in got[0])
    with pytest.raises(FlowError, match="not both or neither"):
        T.ModelTeacher()
