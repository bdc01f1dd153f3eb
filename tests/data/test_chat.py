"""Chat data: schema readers (jsonl / parquet), errors at file:line, Qwen3 mode fusion, assistant loss masks
(all turns / last turn, tool calls, think / no_think), the token-store and corpus wiring, built-in multi-turn SFT."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from flowlm.data import builtin, tasks
from flowlm.data.chat import (
    apply_mode_flags,
    chat_row,
    is_chat_file,
    last_turn_mask,
    mode_flag,
    read_chat_rows,
    render_chat_example,
    split_think,
    to_messages,
)
from flowlm.errors import FlowError

CALL = {"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
CALL_TEXT = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
EMPTY_THINK = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    from flowlm.model.tokenizer import train_tokenizer

    texts = [json.dumps(e["messages"]) for e in builtin.sft_examples(0, 300)]
    return train_tokenizer(texts, 500, tmp_path_factory.mktemp("tok"))


def _runs(tok, ids, mask) -> list[str]:
    """Contiguous masked runs of tokens, decoded."""
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


def _unmasked(tok, ids, mask) -> str:
    return tok.decode([i for i, m in zip(ids, mask) if not m])


def _asst(content: str, reasoning: str = "", **kw) -> dict:
    return {"role": "assistant", "content": content, "reasoning_content": reasoning, **kw}


def _write_jsonl(path: Path, rows: list) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


# -- schemas ----------------------------------------------------------------------------------------
def test_messages_schema_normalised() -> None:
    row = {"id": "x1", "source": "s", "extra": {"nested": 1}, "tools": json.dumps(TOOLS), "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
        {"role": "user", "content": "add 1 and 2"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": "3", "name": "add", "ignored": 1},
        {"role": "assistant", "content": "<think>\nsum\n</think>\n\n3"},
    ]}
    assert chat_row(row) == {"id": "x1", "source": "s", "tools": TOOLS, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "add 1 and 2"},
        _asst("", tool_calls=[{"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]),
        {"role": "tool", "content": "3", "name": "add"},
        _asst("3", "sum"),
    ]}
    # Normalising again changes nothing (the store re-normalises corpus rows).
    assert chat_row(chat_row(row)) == chat_row(row)


def test_sharegpt_and_prompt_completion_schemas() -> None:
    share = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                               {"from": "gpt", "value": "A"}, {"from": "tool", "value": "T"},
                               {"from": "gpt", "value": "B"}]}
    assert to_messages(share) == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, _asst("A"),
                                  {"role": "tool", "content": "T"}, _asst("B")]
    standard = {"prompt": "Q", "completion": "A"}
    assert to_messages(standard) == to_messages({"prompt": "Q", "response": "A"}) == [
        {"role": "user", "content": "Q"}, _asst("A")]
    conv = {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
            "completion": [{"role": "assistant", "content": "A", "reasoning_content": "\nR\n"}]}
    assert to_messages(conv) == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, _asst("A", "R")]


def test_inline_think_normalised_and_renders_like_reasoning_content(tok) -> None:
    assert split_think("<think>\nR\n</think>\n\nA") == ("R", "A")
    assert split_think("R</think>A") == ("R", "A")  # opening tag in the prompt (some distilled datasets)
    assert split_think("no think") == (None, "no think")
    inline = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>\nR\n</think>\n\nA"}]
    field = [{"role": "user", "content": "Q"}, _asst("A", "R")]
    assert to_messages({"messages": inline}) == field
    assert render_chat_example(tok, inline) == render_chat_example(tok, field)
    assert _runs(tok, *render_chat_example(tok, inline)) == ["<think>\nR\n</think>\n\nA<|im_end|>"]


def test_read_chat_rows_jsonl_gz_zst(tmp_path: Path) -> None:
    import zstandard

    rows = [{"id": "a", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
            {"id": "b", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
            {"id": "c", "prompt": "Q", "completion": "A"}]
    want = [{"id": k, "messages": [{"role": "user", "content": "Q"}, _asst("A")]} for k in "abc"]
    plain = _write_jsonl(tmp_path / "c.jsonl", rows[:1] + [""] + rows[1:])  # a blank line is skipped
    gz = _write_jsonl(tmp_path / "c.jsonl.gz", rows)
    zst = tmp_path / "c.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    for p in (plain, gz, zst):
        assert list(read_chat_rows(p)) == want, p.name
        assert is_chat_file(p)
    assert not is_chat_file(_write_jsonl(tmp_path / "t.jsonl", [{"text": "hello", "prompt": "x", "response": "y"}]))


def test_parquet_round_trip(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"id": "p0", "tools": json.dumps(TOOLS), "messages": [
            {"role": "user", "content": "add 1 and 2 /no_think", "reasoning_content": None, "tool_calls": None},
            {"role": "assistant", "content": None, "reasoning_content": None,
             "tool_calls": [{"function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
            {"role": "tool", "content": "3", "reasoning_content": None, "tool_calls": None},
            {"role": "assistant", "content": "3", "reasoning_content": "", "tool_calls": None}]},
        {"id": "p1", "tools": None, "messages": [
            {"role": "user", "content": "Q", "reasoning_content": None, "tool_calls": None},
            {"role": "assistant", "content": "<think>R</think>A", "reasoning_content": None, "tool_calls": None}]},
    ]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert is_chat_file(path)
    got = list(read_chat_rows(path, batch_size=1))
    assert got == [chat_row(r) for r in rows]
    assert got[0]["tools"] == TOOLS
    assert got[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"a": 1, "b": 2}'
    assert got[1] == {"id": "p1", "messages": [{"role": "user", "content": "Q"}, _asst("A", "R")]}
    share = tmp_path / "share.parquet"
    good = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    pq.write_table(pa.Table.from_pylist([{"conversations": good}, {"conversations": [{"from": "bot", "value": "Q"}]}]),
                   share)
    with pytest.raises(FlowError) as e:
        list(read_chat_rows(share))
    assert str(e.value) == (f"{share}:2: conversations[0]: unknown ShareGPT role 'bot' "
                            "(expected human, gpt, system or tool)")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not a parquet file")
    for fn in (is_chat_file, lambda p: list(read_chat_rows(p))):
        with pytest.raises(FlowError, match=f"^{corrupt}: not a readable parquet file"):
            fn(corrupt)


def test_parquet_without_pyarrow_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(FlowError) as e:
        list(read_chat_rows(tmp_path / "x.parquet"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'x.parquet'}: ") and "pip install 'pyarrow" in msg


def test_reasoning_under_gpt_oss_and_other_names_is_read_as_reasoning_content() -> None:
    """gpt-oss's datasets and template keep a turn's reasoning in `thinking`, some exports in `reasoning`:
    both are read as `reasoning_content` (it was dropped, so SFT "with thinking traces" trained on answers)."""
    for key in ("thinking", "reasoning", "reasoning_content"):
        row = chat_row({"messages": [{"role": "user", "content": "Q"},
                                     {"role": "assistant", "content": "A", key: "Because.\n"}]}, where="f:1")
        assert row["messages"][1] == {"role": "assistant", "content": "A", "reasoning_content": "Because."}
    same = chat_row({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>R</think>A",
                                                                     "thinking": "R", "reasoning": "R"}]}, where="f:1")
    assert same["messages"][1]["reasoning_content"] == "R"


GOOD = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}


@pytest.mark.parametrize("row,problem", [
    ({"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "A"}]},
     "messages[0]: unknown role 'narrator' (expected system, user, assistant, tool or environment)"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "A"}]}, "messages[0]: user turn has no content"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant"}]},
     "messages[1]: assistant turn has no content, tool_calls or function_calls"),
    ({"messages": [{"role": "user", "content": "Q"}]}, "no assistant turn (nothing to train on)"),
    ({"conversations": [{"from": "human", "value": "Q"}, {"from": "bot", "value": "A"}]},
     "conversations[1]: unknown ShareGPT role 'bot' (expected human, gpt, system or tool)"),
    ({"prompt": "Q"}, ("no chat columns (expected messages, conversations, prompt+completion or prompt+response); "
                       "found prompt")),
    ({**GOOD, "tools": "{oops"}, "tools is not valid JSON"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>R"}]},
     "messages[1]: malformed inline think block"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>R</think>A",
                                                      "reasoning_content": "other"}]},
     "messages[1]: both reasoning_content and a different inline <think> block"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "thinking": "R",
                                                      "reasoning_content": "S"}]},
     "messages[1]: reasoning_content and thinking differ (one reasoning per turn)"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "thinking": ["R"]}]},
     "messages[1]: thinking must be a string"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "tool_calls": [{"x": 1}]}]},
     "messages[1].tool_calls[0]: a tool call needs a function name"),
    ({"prompt": "Q", "completion": 3}, "completion must be a string or a list of messages, got int"),
    ({"messages": "Q"}, "messages must be a list of messages, got str"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}, {"role": "assistant", "content": "A"}]},
     "messages[0]: content parts of type image_url are not supported"),
])
def test_malformed_row_names_file_and_line(tmp_path: Path, row: dict, problem: str) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [GOOD, "", row])
    with pytest.raises(FlowError) as e:
        list(read_chat_rows(path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}:3: {problem}")


# -- Qwen3 modes ------------------------------------------------------------------------------------
def test_mode_flag_words() -> None:
    assert mode_flag("solve it /no_think") is False and mode_flag("/think please") is True
    assert mode_flag("a /no_think then /think.") is True  # the last flag of a text wins
    assert mode_flag("see a/think, //no_think or /thinking") is None
    assert mode_flag("no flags") is None


def test_apply_mode_flags_last_flag_wins() -> None:
    msgs = [{"role": "system", "content": "S /no_think"},
            {"role": "user", "content": "q1 /think"}, _asst("a1", "r1"),
            {"role": "user", "content": "q2"}, _asst("<think>r2</think>a2")]
    out, thinking = apply_mode_flags(msgs)
    assert thinking is True and out == msgs  # user /think after the system /no_think; q2 has no flag
    msgs[3] = {"role": "user", "content": "q2 /no_think"}
    out, thinking = apply_mode_flags(msgs)
    assert thinking is False
    assert out[4] == _asst("a2", "")  # the final answer loses its reasoning, inline block included
    assert out[:4] == msgs[:4]  # history and flags untouched (Qwen3 keeps the flags in the text)
    assert msgs[4]["content"] == "<think>r2</think>a2"  # the input is not mutated
    # a system turn alone sets the mode; default applies without any flag
    sys_only = [{"role": "system", "content": "Be brief. /no_think"}, {"role": "user", "content": "q"}, _asst("a", "r")]
    assert apply_mode_flags(sys_only)[1] is False
    plain = [{"role": "user", "content": "q"}, _asst("a", "r")]
    assert apply_mode_flags(plain)[1] is True
    assert apply_mode_flags(plain, default=False) == ([plain[0], _asst("a")], False)


def test_no_think_blanks_every_assistant_turn_after_the_last_user_turn() -> None:
    msgs = [{"role": "user", "content": "add /no_think"}, _asst("", "plan", tool_calls=[CALL]),
            {"role": "tool", "content": "3"}, _asst("3", "done")]
    out, thinking = apply_mode_flags(msgs)
    assert not thinking and [m.get("reasoning_content") for m in out] == [None, "", None, ""]


# -- rendering and masks ----------------------------------------------------------------------------
def test_last_turn_mask() -> None:
    assert last_turn_mask([0, 1, 1, 0, 0, 1, 1, 1, 0]) == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert last_turn_mask([1, 1]) == [1, 1] and last_turn_mask([0, 0]) == [0, 0] and last_turn_mask([]) == []


def test_single_turn_mask_is_exactly_the_assistant_text(tok) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
            _asst("It is 4.", "2 plus 2 is 4")]
    for loss in ("all", "last"):
        ids, mask = render_chat_example(tok, msgs, assistant_loss=loss)
        assert _runs(tok, ids, mask) == ["<think>\n2 plus 2 is 4\n</think>\n\nIt is 4.<|im_end|>"]
        assert _unmasked(tok, ids, mask) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?"
                                             "<|im_end|>\n<|im_start|>assistant\n\n")


def test_multi_turn_all_vs_last(tok) -> None:
    msgs = [{"role": "user", "content": "q1 /no_think"}, _asst("a1"),
            {"role": "user", "content": "q2 /think"}, _asst("a2", "r2"),
            {"role": "user", "content": "q3"}, _asst("a3", "r3")]
    ids, mask = render_chat_example(tok, msgs)
    assert _runs(tok, ids, mask) == ["a1<|im_end|>", "a2<|im_end|>", "<think>\nr3\n</think>\n\na3<|im_end|>"]
    ids_last, last = render_chat_example(tok, msgs, assistant_loss="last")
    assert ids_last == ids and _runs(tok, ids, last) == ["<think>\nr3\n</think>\n\na3<|im_end|>"]
    assert sum(last) < sum(mask)
    # the last flag turns the final answer into an empty think block; history turns keep their text
    msgs[4] = {"role": "user", "content": "q3 /no_think"}
    ids, mask = render_chat_example(tok, msgs)
    assert _runs(tok, ids, mask) == ["a1<|im_end|>", "a2<|im_end|>", EMPTY_THINK + "a3<|im_end|>"]
    assert "q3 /no_think<|im_end|>" in _unmasked(tok, ids, mask) and "r3" not in tok.decode(ids)


def test_tool_calls_labelled_tool_outputs_not(tok) -> None:
    msgs = [{"role": "user", "content": "add 1 and 2"}, _asst("", tool_calls=[CALL]),
            {"role": "tool", "content": "3"}, _asst("It is 3.")]
    ids, mask = render_chat_example(tok, {"messages": msgs, "tools": TOOLS})
    assert _runs(tok, ids, mask) == [EMPTY_THINK + CALL_TEXT + "<|im_end|>", EMPTY_THINK + "It is 3.<|im_end|>"]
    rest = _unmasked(tok, ids, mask)
    assert "<|im_start|>tool\n3<|im_end|>\n" in rest and "# Tools" in rest and "<tool_call>\n{" not in rest
    assert tok.convert_tokens_to_ids("<tool_call>") in [i for i, m in zip(ids, mask) if m]
    _, last = render_chat_example(tok, {"messages": msgs, "tools": TOOLS}, assistant_loss="last")
    assert _runs(tok, ids, last) == [EMPTY_THINK + "It is 3.<|im_end|>"]
    # the `tools` argument overrides the row's column: without tools there is no system tools block
    ids2, _ = render_chat_example(tok, {"messages": msgs, "tools": TOOLS}, tools=[])
    assert "# Tools" not in tok.decode(ids2)


def test_render_accepts_every_schema_and_rejects_bad_loss(tok) -> None:
    a = render_chat_example(tok, {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]})
    assert a == render_chat_example(tok, {"prompt": "Q", "completion": "A"}) == render_chat_example(
        tok, [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}])
    with pytest.raises(FlowError, match="assistant_loss must be 'all' or 'last'"):
        render_chat_example(tok, GOOD, assistant_loss="first")  # type: ignore[arg-type]


# -- wiring -----------------------------------------------------------------------------------------
def test_store_assistant_loss_last_labels_only_the_final_turn(tok, tmp_path: Path) -> None:
    from flowlm.data.store import tokenize_to_store

    conv = {"source": "chat", "conversations": [
        {"from": "human", "value": "q1"}, {"from": "gpt", "value": "<think>r1</think>a1"},
        {"from": "human", "value": "q2 /no_think"}, {"from": "gpt", "value": "<think>r2</think>a2"}]}
    docs = [conv, {"text": "plain text", "source": "web"}]
    last = tokenize_to_store(tok, docs, tmp_path / "last", assistant_loss="last")
    every = tokenize_to_store(tok, docs, tmp_path / "all")
    ids, m_last, m_all = last.doc(0).tolist(), last.doc_mask(0).tolist(), every.doc_mask(0).tolist()
    assert ids == every.doc(0).tolist() and ids[-1] == tok.eos_token_id and m_last[-1] == m_all[-1] == 0
    assert _runs(tok, ids, m_all) == ["a1<|im_end|>", EMPTY_THINK + "a2<|im_end|>"]
    assert _runs(tok, ids, m_last) == [EMPTY_THINK + "a2<|im_end|>"]
    assert last.doc_mask(1).tolist() == [1] * len(last.doc(1))  # text documents stay all-ones
    assert last.meta["sources"] == {"chat": 1, "web": 1}
    with pytest.raises(FlowError, match=r"^document 1: messages\[0\]: unknown role"):
        tokenize_to_store(tok, [GOOD, {"messages": [{"role": "bot", "content": "x"}]}], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_tokenizer_stage_config_assistant_loss() -> None:
    from flowlm.flow.stages.tokenizer import TokenizerStageConfig

    assert TokenizerStageConfig().assistant_loss == "all"
    assert TokenizerStageConfig(assistant_loss="last").assistant_loss == "last"
    with pytest.raises(Exception, match="assistant_loss"):
        TokenizerStageConfig(assistant_loss="first")


def test_corpus_reads_chat_parquet_sharegpt_and_text(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flowlm.flow.stages.corpus import _read_files

    pq.write_table(pa.Table.from_pylist([{"prompt": "Q", "completion": "A", "source": "pq"}]), tmp_path / "c.parquet")
    share = _write_jsonl(tmp_path / "s.jsonl", [{"conversations": [{"from": "human", "value": "Q"},
                                                                   {"from": "gpt", "value": "A"}]}])
    text = _write_jsonl(tmp_path / "t.jsonl", [{"text": "hello", "id": "t0"}])
    rows = _read_files([str(tmp_path / "c.parquet"), str(share), str(text)])
    chat = [{"role": "user", "content": "Q"}, _asst("A")]
    assert rows[0] == {"source": "pq", "messages": chat} and rows[1] == {"messages": chat}
    assert rows[2]["text"] == "hello" and rows[2]["id"] == "t0" and "messages" not in rows[2]
    bad = _write_jsonl(tmp_path / "b.jsonl", [GOOD, {"messages": [{"role": "user", "content": "Q"}]}])
    with pytest.raises(FlowError, match=f"^{bad}:2: no assistant turn"):
        _read_files([str(bad)])


# -- built-in multi-turn SFT ------------------------------------------------------------------------
def test_builtin_multi_turn_mixes_modes_and_keeps_single_turn_output() -> None:
    base = builtin.sft_examples(0, 120)
    mixed = builtin.sft_examples(0, 120, multi_turn_fraction=0.5)
    assert mixed == builtin.sft_examples(0, 120, multi_turn_fraction=0.5)
    multi = [e for e in mixed if e["id"].startswith("sft-mt:")]
    assert 30 < len(multi) < 90
    # single-turn examples are exactly those of the default call at the same positions (separate rng stream)
    for a, b in zip(base, mixed):
        assert b == a if not b["id"].startswith("sft-mt:") else b["id"] == "sft-mt:" + a["id"].removeprefix("sft:")
    inherited = both_flags = 0
    for e in multi:
        msgs = e["messages"]
        assert len(msgs) in (4, 6) and [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        assert apply_mode_flags(msgs)[1] == e["thinking"]  # the last flag decides the final mode
        assert (msgs[-1]["reasoning_content"] != "") == e["thinking"] and e["answer"] in msgs[-1]["content"]
        flags = [mode_flag(m["content"]) for m in msgs if m["role"] == "user"]
        inherited += flags[-1] is None and not e["thinking"]
        both_flags += True in flags and False in flags
        for m in msgs:
            if m["role"] == "user":
                assert not tasks.is_heldout(m["content"].removesuffix(" /no_think").removesuffix(" /think"))
    assert inherited > 0 and both_flags > 0


def test_builtin_multi_turn_renders_with_final_turn_mask(tok) -> None:
    ex = next(e for e in builtin.sft_examples(1, 40, multi_turn_fraction=1.0) if not e["thinking"])
    ids, mask = render_chat_example(tok, ex, assistant_loss="last")
    final = ex["messages"][-1]
    assert _runs(tok, ids, mask) == [EMPTY_THINK + final["content"] + "<|im_end|>"]
    ids, mask = render_chat_example(tok, ex)
    assert len(_runs(tok, ids, mask)) == len(ex["messages"]) // 2
    assert np.asarray(mask).sum() > np.asarray(last_turn_mask(mask)).sum()
