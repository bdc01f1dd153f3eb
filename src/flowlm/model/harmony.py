"""OpenAI's harmony format (gpt-oss): replies made of channel messages, read in flowlm's own text form.

After the generation prompt `<|start|>assistant`, a gpt-oss reply is a run of messages:

    <|channel|>analysis<|message|>The user asks ...<|end|>
    <|start|>assistant<|channel|>final<|message|>It is 42.<|return|>

or, for a tool call, a commentary message addressed to a function (the recipient may also stand in the
header before the channel, as the chat template writes it: `<|start|>assistant to=functions.NAME<|channel|>...`):

    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>

flowlm reads such a reply in its own text form, so the verifiers, the post-training data builders and the
tool loop need nothing of their own for it (`canonical`): the analysis channel becomes the think block, the
final channel (and commentary preambles, which users see) the answer, and each call a `<tool_call>` JSON block:

    <think>\\nThe user asks ...\\n</think>\\n\\nIt is 42.
    <think>\\n...\\n</think>\\n\\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

A reply cut inside its analysis is an unclosed think block (all reasoning, no answer), as for any model. The
tokens stay the model's own: only the completion's text is read this way (`flowlm.model.tokenizer.decode_reply`).

A reply ends at `<|return|>` (an answer) or `<|call|>` (a call), not at `<|end|>`, which closes each message
inside it: these two are a harmony template's end-of-turn ids (`end_ids`, used by `turn_end_ids`). Training
rows keep `reasoning_content`; a template that reads `thinking` instead (gpt-oss's) gets it there
(`flowlm.model.tokenizer.fit_to_template`).
"""

from __future__ import annotations

import json
import re
from typing import Any

START, CHANNEL, MESSAGE, END, RETURN, CALL = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>",
                                             "<|call|>")
MARKUP = (START, CHANNEL, MESSAGE, END, RETURN, CALL, "<|constrain|>")
_MESSAGE = re.compile(r"(.*?)<\|message\|>(.*?)(<\|end\|>|<\|return\|>|<\|call\|>|$)", re.DOTALL)
_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
_MARKUP = re.compile("|".join(re.escape(t) for t in MARKUP))


def is_harmony(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template writes harmony messages (an assistant turn in a `final` channel)
    and the tokenizer has harmony's reply ends, `<|return|>` and `<|call|>`. Probed once per template."""
    from flowlm.model.tokenizer import _PROBE_USER, _probed, special_token_id

    if not getattr(tokenizer, "chat_template", None):
        return False

    def probe(tok: Any) -> bool:
        try:
            text = tok.apply_chat_template([_PROBE_USER, {"role": "assistant", "content": "flowlmprobe"}],
                                           tokenize=False)
        except Exception:  # noqa: BLE001 - a template that refuses the probe is not harmony's
            return False
        return (f"{CHANNEL}final{MESSAGE}flowlmprobe" in text and special_token_id(tok, RETURN) is not None
                and special_token_id(tok, CALL) is not None)

    return _probed(tokenizer, "harmony", probe)


def end_ids(tokenizer: Any) -> tuple[int, ...]:
    """The ids that end a harmony reply: `<|return|>` and `<|call|>`."""
    from flowlm.model.tokenizer import special_token_id

    return tuple(i for i in (special_token_id(tokenizer, RETURN), special_token_id(tokenizer, CALL)) if i is not None)


def messages(raw: str) -> list[dict[str, Any]]:
    """The messages of a reply decoded with its special tokens: `{channel, recipient, body, closed}` each
    (`channel` "" when the header names none, `recipient` None unless addressed, e.g. `functions.get_weather`)."""
    out = []
    for part in (raw or "").split(START):
        m = _MESSAGE.match(part)
        if m is None:
            continue
        header, body, close = m.groups()
        channel = _CHANNEL.search(header)
        recipient = _RECIPIENT.search(header)
        out.append({"channel": channel.group(1) if channel else "", "body": body, "closed": bool(close),
                    "recipient": recipient.group(1) if recipient else None})
    return out


def canonical(raw: str) -> str:
    """A harmony reply (decoded with its special tokens) in flowlm's text form (module docstring). Never
    raises: a call whose arguments are not JSON keeps them as a string, which the call parsers report."""
    msgs = messages(raw)
    reasoning = [m["body"].strip() for m in msgs if m["channel"] == "analysis" and m["recipient"] is None]
    if msgs and msgs[-1]["channel"] == "analysis" and not msgs[-1]["closed"]:
        return "<think>\n" + "\n\n".join(reasoning)  # cut mid-thought: no answer
    answer, calls = [], []
    for m in msgs:
        if m["recipient"] and m["recipient"].startswith("functions."):
            try:
                args = json.loads(m["body"]) if m["body"].strip() else {}
            except (ValueError, RecursionError):
                args = m["body"]
            calls.append("<tool_call>" + json.dumps({"name": m["recipient"][len("functions."):], "arguments": args},
                                                    ensure_ascii=False) + "</tool_call>")
        elif m["channel"] in ("final", "commentary") and m["recipient"] is None:
            answer.append(m["body"].strip())
    if not msgs:  # no message: the text without harmony's markup
        return _MARKUP.sub("", raw or "")
    head = "<think>\n" + "\n\n".join(reasoning) + "\n</think>\n\n" if reasoning else ""
    return head + "\n\n".join(a for a in answer if a) + "".join(calls)
