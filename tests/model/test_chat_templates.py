"""Assistant masks under chat templates without `{% generation %}` markers (most published ones: Qwen3's,
Llama 3's): `render_chat` locates each assistant turn by rendering its prefix, and gives the marked template's
masks wherever that is possible; where it is not, a one-line error, never an all-zero mask (which trained
on nothing and reported a loss of 0)."""

from __future__ import annotations

import json
import random
import re

import pytest

from flowlm.data import builtin
from flowlm.data.chat import render_chat_example
from flowlm.data.pairs import render_pair
from flowlm.errors import FlowError
from flowlm.model.tokenizer import has_generation_markers, load_tokenizer, render_chat, train_tokenizer
from tests.data.test_chat import _runs

# A plain ChatML template, prefix-stable: every turn renders the same wherever it stands.
CHATML = ("{%- for m in messages -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}{%- endfor -%}"
          "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")
PIECES = ["Hello", " world", "  two spaces", "\n", "\n\n", " ", "\t", "x=1", "é", "😀", "/think", "/no_think",
          "12345", " 7", "a\r\nb", "   "]


@pytest.fixture(scope="module")
def toks(tmp_path_factory: pytest.TempPathFactory):
    """(flowlm's tokenizer, the same with its template's generation markers removed, the same with CHATML)."""
    d = tmp_path_factory.mktemp("tok")
    marked = train_tokenizer([json.dumps(e["messages"]) for e in builtin.sft_examples(0, 300)], 500, d)
    stripped = load_tokenizer(d)
    stripped.chat_template = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", marked.chat_template)
    chatml = load_tokenizer(d)
    chatml.chat_template = CHATML
    return marked, stripped, chatml


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 5)))


def _conversation(rng: random.Random, turns: int) -> list[dict]:
    msgs = [{"role": "system", "content": _text(rng)}] if rng.random() < 0.3 else []
    for _ in range(turns):
        msgs.append({"role": "user", "content": _text(rng) or "q"})
        msgs.append({"role": "assistant", "content": _text(rng) or "a", "reasoning_content": _text(rng)})
    return msgs


def test_marker_detection(toks) -> None:
    marked, stripped, chatml = toks
    assert has_generation_markers(marked) and not has_generation_markers(stripped)
    assert not has_generation_markers(chatml)


@pytest.mark.parametrize("seed", range(40))
def test_without_markers_the_masks_equal_the_marked_templates(toks, seed: int) -> None:
    """Single-turn rows (either loss) and the last turn of multi-turn rows: token for token the same mask."""
    marked, stripped, _ = toks
    rng = random.Random(seed)
    single = _conversation(rng, 1)
    multi = _conversation(rng, rng.randint(2, 3))
    for msgs, losses in ((single, ("all", "last")), (multi, ("last",))):
        for loss in losses:
            want = render_chat_example(marked, msgs, assistant_loss=loss)
            assert render_chat_example(stripped, msgs, assistant_loss=loss) == want


def test_a_template_that_rerenders_history_is_a_clear_error_for_every_turn(toks) -> None:
    """flowlm's template (like Qwen3's) drops the reasoning of turns before the last user turn, so without
    markers an earlier turn renders differently at the end of its prefix than inside the conversation."""
    marked, stripped, _ = toks
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "reasoning_content": "r2"}]
    with pytest.raises(FlowError, match=r"renders messages\[1\] differently .*assistant_loss: last"):
        render_chat_example(stripped, msgs, assistant_loss="all")
    assert _runs(stripped, *render_chat_example(stripped, msgs, assistant_loss="last")) == [
        "<think>\nr2\n</think>\n\na2<|im_end|>"]
    assert sum(render_chat_example(marked, msgs, assistant_loss="all")[1]) > 0  # the marked template has both


@pytest.mark.parametrize("seed", range(20))
def test_prefix_stable_template_masks_every_assistant_turn_and_nothing_else(toks, seed: int) -> None:
    _, _, chatml = toks
    rng = random.Random(seed)
    msgs = _conversation(rng, rng.randint(1, 3))
    for m in msgs:
        m.pop("reasoning_content", None)  # CHATML renders content only
    ids, mask = render_chat_example(chatml, msgs, assistant_loss="all")
    assert ids == chatml.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    # each turn's content and its <|im_end|>: not its header, not the newline after it
    assert _runs(chatml, ids, mask) == [m["content"] + "<|im_end|>" for m in msgs if m["role"] == "assistant"]
    ids_last, last = render_chat_example(chatml, msgs, assistant_loss="last")
    assert ids_last == ids and _runs(chatml, ids, last) == [msgs[-1]["content"] + "<|im_end|>"]


def test_generation_prompt_and_empty_answers(toks) -> None:
    _, _, chatml = toks
    ids, mask = render_chat(chatml, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert chatml.decode(ids).endswith("<|im_start|>assistant\n") and not any(mask)
    ids, mask = render_chat(chatml, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}])
    assert _runs(chatml, ids, mask) == ["<|im_end|>"]


def test_preference_pairs_mask_only_the_answer_without_markers(toks) -> None:
    marked, stripped, chatml = toks
    row = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}
    assert render_pair(stripped, row) == render_pair(marked, row)
    got = render_pair(chatml, row)
    assert [_runs(chatml, *got[side]) for side in ("chosen", "rejected")] == [["4<|im_end|>"], ["5<|im_end|>"]]


def test_a_template_that_hides_the_answer_is_an_error_not_a_silent_zero_loss(toks) -> None:
    _, _, chatml = toks
    hiding = load_tokenizer(chatml.name_or_path)
    hiding.chat_template = ("{%- for m in messages if m.role != 'assistant' -%}{{- m.content -}}{%- endfor -%}"
                            "{%- if add_generation_prompt -%}{{- 'A:' -}}{%- endif -%}")
    with pytest.raises(FlowError):
        render_chat_example(hiding, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                            where="chat.jsonl:3")


def test_a_tokenizer_without_a_template_says_how_to_give_it_one(toks) -> None:
    _, _, chatml = toks
    base = load_tokenizer(chatml.name_or_path)
    base.chat_template = None
    with pytest.raises(FlowError, match="has no chat template .*put a chat_template.jinja beside its tokenizer files"):
        render_chat_example(base, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])


def test_multi_turn_prompts_of_a_template_that_rerenders_history(toks) -> None:
    """Only the final answer needs locating: a DPO pair and a generation prompt whose prompt holds earlier
    turns with reasoning work under the marker-free copy of flowlm's (Qwen3-like) template."""
    from flowlm.generate.prompts import to_prompt_ids

    marked, stripped, _ = toks
    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
               {"role": "user", "content": "q2"}]
    row = {"prompt": history, "chosen": "good", "rejected": "bad"}
    assert render_pair(stripped, row) == render_pair(marked, row)
    assert _runs(stripped, *render_pair(stripped, row)["chosen"]) == ["<think>\n\n</think>\n\ngood<|im_end|>"]
    assert to_prompt_ids(history, stripped) == to_prompt_ids(history, marked)


def test_a_template_that_ignores_reasoning_gets_the_trace_inline_and_trains_on_it(toks) -> None:
    """A plain ChatML template writes `content` only: a thinking row's trace was dropped without a word
    (SFT "with thinking traces" then trained on answers alone). Now it is written inline, as the content's
    leading think block, and labelled like the rest of the answer."""
    from flowlm.model.tokenizer import template_renders

    marked, stripped, chatml = toks
    assert template_renders(marked) == template_renders(stripped) == {"reasoning": True, "tools": True,
                                                                      "tool_calls": True, "thinking": True}
    assert template_renders(chatml) == {"reasoning": False, "tools": False, "tool_calls": False, "thinking": False}
    row = {"messages": [{"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4", "reasoning_content": "two and two"}]}
    ids, mask = render_chat_example(chatml, row)
    assert chatml.decode(ids) == ("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
                                  "<think>\ntwo and two\n</think>\n\n4<|im_end|>\n")
    labelled = chatml.decode([t for t, m in zip(ids, mask) if m])
    assert labelled == "<think>\ntwo and two\n</think>\n\n4<|im_end|>"
    # a template that writes the trace itself is left alone (the trace once, in its own think block)
    text = marked.decode(render_chat_example(marked, row)[0])
    assert text.count("two and two") == 1 and "<think>\ntwo and two\n</think>" in text


def test_tools_or_tool_calls_a_template_would_drop_are_an_error_naming_the_row(toks) -> None:
    """Tool definitions and assistant tool calls a template does not write would vanish (the call's turn
    rendering empty and trained as such): a one-line error naming the row instead."""
    marked, _, chatml = toks
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                                "function": {"name": "weather", "arguments": {}}}]}
    tools = [{"type": "function", "function": {"name": "weather", "description": "d",
                                               "parameters": {"type": "object", "properties": {}}}}]
    rows = [{"messages": [{"role": "user", "content": "Weather?"}, call, {"role": "tool", "content": "18C"},
                          {"role": "assistant", "content": "18C."}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
             "tools": tools}]
    for row, what in zip(rows, ["`tool_calls`", "`tools`"]):
        with pytest.raises(FlowError, match=rf"^in.jsonl:3: the chat template of .* does not write .*{what}"):
            render_chat_example(chatml, row, where="in.jsonl:3")
        ids, mask = render_chat_example(marked, row)  # flowlm's template writes both
        assert "weather" in marked.decode(ids) and any(mask)


# After the shape of Llama 3's template (written for this test): header tokens around each role, `<|eot_id|>`
# closing every turn, the tools in a system turn as JSON, tool calls as a bare JSON object, tool answers in
# `ipython` turns.
LLAMA_STYLE = (
    "{%- if tools -%}{{- '<|start_header_id|>system<|end_header_id|>\\n\\nFunctions: ' + (tools | tojson) + "
    "'<|eot_id|>' -}}{%- endif -%}"
    "{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + ('ipython' if m.role == 'tool' else m.role) + '<|end_header_id|>\\n\\n' -}}"
    "{{- m.content or '' -}}"
    "{%- for c in (m.tool_calls or []) -%}"
    "{{- '{\"name\": \"' + c.function.name + '\", \"parameters\": ' + (c.function.arguments | tojson) + '}' -}}"
    "{%- endfor -%}{{- '<|eot_id|>' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}")


def test_a_template_whose_turns_end_with_another_token_is_probed_for_it(toks, tmp_path) -> None:
    """The end-of-turn token is the template's own (`turn_end_ids`, probed): Llama 3's `<|eot_id|>` stops chat
    replies and closes each labelled turn, where only `<|im_end|>` was known until 2026-12-07 (the tool loop
    crashed on such a template, and replies ran on to the generation config's EOS); its calls are Llama 3's
    bare JSON (`tests/tools/test_tool_formats.py` runs the tool loop on it)."""
    from flowlm.generate.prompts import ends_its_turn
    from flowlm.generate.params import SamplingParams
    from flowlm.model.tokenizer import tool_format, turn_end_ids

    marked = toks[0]
    marked.save_pretrained(tmp_path / "l")
    llama = load_tokenizer(tmp_path / "l")
    llama.add_special_tokens({"extra_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    llama.chat_template = LLAMA_STYLE
    eot = llama.convert_tokens_to_ids("<|eot_id|>")
    assert turn_end_ids(llama) == (eot,) and turn_end_ids(toks[0]) == (llama.convert_tokens_to_ids("<|im_end|>"),)
    chat = [{"role": "user", "content": "hi"}]
    assert ends_its_turn(chat, SamplingParams(), llama).stop_token_ids == (eot,)
    conversation = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    ids, mask = render_chat(llama, conversation)
    assert _runs(llama, ids, mask) == ["b<|eot_id|>", "d<|eot_id|>"]
    assert tool_format(llama) == "llama3_json"
