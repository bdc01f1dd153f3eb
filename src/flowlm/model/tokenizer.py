"""Byte-level BPE tokenizer training, the ChatML chat template, and SFT rendering with assistant masks.

`train_tokenizer` trains with the Rust `tokenizers` library and saves a Hugging Face tokenizer
(`tokenizer.json`, `tokenizer_config.json` + `chat_template.jinja`, special tokens) that
`AutoTokenizer.from_pretrained(dir)` loads offline. Pre-tokenization uses the cl100k-style split regex
(OLMo 3's dolma2 tokenizer is cl100k-based): digits in groups of at most three, letters with one
leading non-letter, runs of punctuation, newlines kept apart from words. Bytes are the base alphabet, so
no input is ever out of vocabulary.

Special tokens take the first ids in this order (so every flowlm tokenizer agrees on them):
`<|endoftext|>`=0 (eos and bos), `<|pad|>`=1, `<|im_start|>`=2, `<|im_end|>`=3, `<think>`=4,
`</think>`=5, `<tool_call>`=6, `</tool_call>`=7. The last four are *not* "special" for decoding:
`decode(..., skip_special_tokens=True)` keeps them, so reasoning / tool-call parsers can see them.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from flowlm.errors import ConfigError, FlowError
from flowlm.model import harmony

EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK, END_THINK = "<think>", "</think>"
TOOL_CALL, END_TOOL_CALL = "<tool_call>", "</tool_call>"
CONTROL_TOKENS = (EOS, PAD, IM_START, IM_END)
MARKUP_TOKENS = (THINK, END_THINK, TOOL_CALL, END_TOOL_CALL)
# cl100k split pattern (tiktoken), as in Llama 3 / dolma2 tokenizer.json files.
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Sections of tokenizer.json that decide the id sequence of a text (padding / truncation do not).
_HASHED_SECTIONS = ("added_tokens", "normalizer", "pre_tokenizer", "model", "post_processor", "decoder")


def chat_template() -> str:
    """The packaged ChatML / Qwen3-thinking Jinja template."""
    return resources.files("flowlm.model").joinpath("templates/chat.jinja").read_text(encoding="utf-8")


def _backend(vocab_size: int) -> tuple[Any, Any]:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS + MARKUP_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    return tok, trainer


def _unmark_markup(tok: Any) -> Any:
    """BpeTrainer marks every token it is given as special; clear the flag on the think / tool markup."""
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    for entry in data["added_tokens"]:
        if entry["content"] in MARKUP_TOKENS:
            entry["special"] = False
    return Tokenizer.from_str(json.dumps(data))


def special_token_id(tokenizer: Any, token: str) -> int | None:
    """Id of a special token the tokenizer knows (None when it would map to unk or is absent)."""
    try:
        tid = tokenizer.convert_tokens_to_ids(token)
    except Exception:  # noqa: BLE001 - tokenizers differ; absence is the answer
        return None
    if not isinstance(tid, int) or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
        return None
    return int(tid)


def turn_end_ids(tokenizer: Any) -> tuple[int, ...]:
    """The end-of-turn token's id: where a chat reply stops. A model's EOS (`<|endoftext|>`) ends a document,
    not a turn, so chat sampling must stop here too. Probed once per chat template: the first special token
    it writes after an assistant turn's text in the middle of a conversation (`<|im_end|>` for ChatML
    templates, flowlm's, Qwen3's and OLMo 3's; `<|eot_id|>` for Llama 3's; `<end_of_turn>` for Gemma's).
    A harmony template (gpt-oss) ends a reply at `<|return|>` or `<|call|>` (`flowlm.model.harmony`).
    Without a template, or when the probe finds none, `<|im_end|>` if the tokenizer has it."""
    def probe(tok: Any) -> tuple[int, ...]:
        marker = "flowlmprobeend"
        try:
            text = tok.apply_chat_template([_PROBE_USER, {"role": "assistant", "content": marker}, _PROBE_USER],
                                           tokenize=False)
        except Exception:  # noqa: BLE001 - a template that refuses the probe: the fallback below
            text = ""
        at = text.find(marker)
        if at >= 0:
            special = {int(i) for i, t in getattr(tok, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
            special |= {int(i) for i in getattr(tok, "all_special_ids", [])}
            found = next((t for t in tok.encode(text[at + len(marker):], add_special_tokens=False) if t in special), None)
            if found is not None:
                return (found,)
        tid = special_token_id(tok, IM_END)
        return (tid,) if tid is not None else ()

    if not getattr(tokenizer, "chat_template", None):
        tid = special_token_id(tokenizer, IM_END)
        return (tid,) if tid is not None else ()
    if harmony.is_harmony(tokenizer):  # gpt-oss: `<|end|>` closes each message; a reply ends at these
        return harmony.end_ids(tokenizer)
    return _probed(tokenizer, "turn_end", probe)


# Markup that reasoning and tool-call parsers read: kept in a completion's text even where a tokenizer
# declares it special (some do: vLLM had to stop skipping special tokens for its Hermes parser).
PARSED_MARKUP = (THINK, END_THINK, TOOL_CALL, END_TOOL_CALL, "<function_calls>", "</function_calls>",
                 "<functions>", "</functions>", "<tool_response>", "</tool_response>",
                 "[TOOL_CALLS]", "[CALL_ID]", "[ARGS]", "<|python_tag|>", "<|python_start|>", "<|python_end|>",
                 "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>",
                 "<｜tool▁calls▁end｜>")
_HIDDEN: dict[int, tuple[Any, frozenset[int]]] = {}


def hidden_ids(tokenizer: Any) -> frozenset[int]:
    """The ids a completion's text leaves out: the tokenizer's declared special tokens (EOS, padding,
    `<|im_start|>`, `<|im_end|>`, ...), except `PARSED_MARKUP` tokens."""
    cached = _HIDDEN.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        keep = {special_token_id(tokenizer, t) for t in PARSED_MARKUP}
        cached = (tokenizer, frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []) if i not in keep))
        _HIDDEN[id(tokenizer)] = cached
    return cached[1]


def decode_reply(tokenizer: Any, tokens: Sequence[int], stop: Sequence[str] = ()) -> str:
    """A completion's text: its tokens decoded without the tokenizer's control tokens (`hidden_ids`) but with
    the think and tool-call markup, cut before the first `stop` string it holds. A harmony reply (gpt-oss) is
    read in flowlm's text form: think block, answer, `<tool_call>` blocks (`flowlm.model.harmony.canonical`)."""
    if harmony.is_harmony(tokenizer):
        text = harmony.canonical(tokenizer.decode(list(tokens), skip_special_tokens=False))
    else:
        hidden = hidden_ids(tokenizer)
        text = tokenizer.decode([t for t in tokens if t not in hidden], skip_special_tokens=False)
    cuts = [text.find(x) for x in stop if x in text]
    return text[:min(cuts)] if cuts else text


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> Any:
    """Train a byte-level BPE on `texts`, save it as a Hugging Face tokenizer in `out_dir`, return it.

    The vocabulary holds 8 special tokens + 256 bytes + merges up to `vocab_size` entries (fewer when
    the corpus has fewer mergeable pairs; `len(tokenizer)` is the size to give the model).
    """
    from transformers import PreTrainedTokenizerFast

    n_fixed = len(CONTROL_TOKENS) + len(MARKUP_TOKENS) + 256
    if vocab_size <= n_fixed:
        raise FlowError(f"vocab_size {vocab_size} must exceed the {n_fixed} special + byte tokens")
    tok, trainer = _backend(vocab_size)
    tok.train_from_iterator(texts, trainer=trainer)
    tok = _unmark_markup(tok)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, unk_token=None,
        model_max_length=1 << 20, chat_template=chat_template(), clean_up_tokenization_spaces=False,
    )
    fast.add_special_tokens({"extra_special_tokens": [IM_START, IM_END]})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return load_tokenizer(out)


def load_tokenizer(path: str | Path) -> Any:
    """Load a tokenizer directory (flowlm or any Hugging Face fast tokenizer) without network access."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not (p / "tokenizer.json").exists():
        raise FlowError(f"{p / 'tokenizer.json'}: missing (not a tokenizer directory)")
    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise FlowError(f"{p}: cannot load tokenizer ({reason})") from None


def tokenizer_hash(path_or_tok: str | Path | Any) -> str:
    """sha256 of the id-determining sections of tokenizer.json (vocab, merges, specials, pre-tokenizer).

    Accepts a tokenizer directory, a `tokenizer.json` path, or a loaded fast tokenizer; all three agree
    for the same tokenizer, so a token store can record the hash at write time and check it on open.
    """
    if isinstance(path_or_tok, (str, Path)):
        p = Path(path_or_tok)
        p = p / "tokenizer.json" if p.is_dir() else p
        if not p.exists():
            raise FlowError(f"{p}: missing (cannot hash tokenizer)")
        data = json.loads(p.read_text(encoding="utf-8"))
    else:
        backend = getattr(path_or_tok, "backend_tokenizer", path_or_tok)
        data = json.loads(backend.to_str())
    canon = json.dumps({k: data.get(k) for k in _HASHED_SECTIONS}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template marks assistant output with `{% generation %}` (flowlm's does;
    most published templates, Qwen3's and Llama 3's among them, do not)."""
    template = getattr(tokenizer, "chat_template", None)
    templates = template.values() if isinstance(template, dict) else [template]
    return any(isinstance(t, str) and _GENERATION_TAG.search(t) for t in templates)


_PROBES: dict[tuple[int, str, str], Any] = {}
_PROBE_USER = {"role": "user", "content": "Hello"}


def _probed(tokenizer: Any, what: str, probe: Any) -> Any:
    """`probe(tokenizer)`, once per tokenizer and chat template (what a template writes cannot change)."""
    key = (id(tokenizer), str(getattr(tokenizer, "chat_template", None)), what)
    if key not in _PROBES:
        _PROBES[key] = probe(tokenizer)
    return _PROBES[key]


def _writes(tokenizer: Any, marker: str, messages: list[dict[str, Any]], refused: bool = True, **kw: Any) -> bool:
    """Whether `marker` appears in the rendering of `messages`; `refused` (True: no verdict) if the template
    refuses."""
    try:
        return marker in tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    except Exception:  # noqa: BLE001 - a template that refuses the probe conversation: no verdict
        return refused


def has_thinking_switch(tokenizer: Any) -> bool:
    """Whether the chat template reads `enable_thinking` (Qwen3's hard switch; flowlm's template has it):
    a one-turn generation prompt renders differently with it off. ChatML and Llama 3 templates ignore it."""
    if not getattr(tokenizer, "chat_template", None):
        return False

    def probe(tok: Any) -> bool:
        try:
            on, off = (tok.apply_chat_template([_PROBE_USER], tokenize=False, add_generation_prompt=True,
                                               enable_thinking=v) for v in (True, False))
        except Exception:  # noqa: BLE001 - a template that refuses this probe: no verdict, so no refusal
            return True
        return on != off

    return _probed(tokenizer, "thinking_switch", probe)


def require_thinking_switch(tokenizer: Any, option: str) -> None:
    """ConfigError naming `option` (the setting that turned thinking off) when the template has no hard
    thinking switch: its prompts with thinking off would be its prompts with thinking on, silently."""
    if not has_thinking_switch(tokenizer):
        raise ConfigError(
            f"{option}: the chat template of {getattr(tokenizer, 'name_or_path', '?') or '?'} ignores enable_thinking "
            "(it has no hard thinking switch), so thinking off would render the same prompts as thinking on; "
            "put /no_think in the prompt instead (flowlm eval: --switch /no_think), or use a template that reads "
            "enable_thinking")


def render_ids(tokenizer: Any, messages: Sequence[dict[str, Any]], **kw: Any) -> list[int]:
    """Token ids of `messages` rendered with the chat template, no mask (a prompt to generate from: pass
    `add_generation_prompt=True`); `kw` goes to `apply_chat_template` (`enable_thinking`, `tools`). The
    messages and tools are first fitted to the template (`fit_to_template`)."""
    messages, tools = fit_to_template(tokenizer, messages, kw.pop("tools", None))
    return _render_fitted(tokenizer, messages, tools=tools, **kw)


def _render_fitted(tokenizer: Any, messages: Sequence[dict[str, Any]], **kw: Any) -> list[int]:
    """`render_ids` of messages already fitted to the template (`render_chat`'s and the prefix masks')."""
    if not getattr(tokenizer, "chat_template", None):
        raise FlowError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')}: has no chat template (a base model's "
                        "tokenizer?): chat data needs one; put a chat_template.jinja beside its tokenizer files")
    if not messages and not kw.get("add_generation_prompt"):
        return []
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True, **kw)
    return list(out["input_ids"])


def _agreeing(ids: list[int], upto: list[int], ends: set[int]) -> int | None:
    """Where the rendering of a conversation's prefix `upto` ends inside the whole conversation's `ids`: its
    length when it is a prefix of `ids`; when the two differ only in the token(s) closing the prefix's last
    turn (end-of-turn tokens on both sides), the end of the whole conversation's closing token; else None."""
    same = next((j for j, (a, b) in enumerate(zip(ids, upto)) if a != b), min(len(ids), len(upto)))
    if same == len(upto):
        return same
    if same < len(ids) and ids[same] in ends and all(t in ends for t in upto[same:]):
        return same + 1
    return None


def _prefix_mask(tokenizer: Any, messages: Sequence[dict[str, Any]], ids: list[int], *, last_only: bool,
                 **kw: Any) -> list[int]:
    """The assistant mask of a template without `{% generation %}` markers, as open-instruct computes it:
    assistant message i spans from the end of `messages[:i]` rendered with the (thinking-mode) generation
    prompt to the end of `messages[:i+1]`, cut after its last end-of-turn token (`<|im_end|>`, the EOS), so
    the newline between turns stays unlabelled. Needs a template whose renderings of those prefixes are prefixes of
    the whole conversation's, up to how the last turn is closed (OLMo 3's closes a conversation's last turn
    with the EOS and the others with `<|im_end|>`); FlowError when one is not (a template that re-renders
    earlier turns)."""
    ends = set(turn_end_ids(tokenizer))
    if tokenizer.eos_token_id is not None:
        ends.add(int(tokenizer.eos_token_id))
    turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    mask = [0] * len(ids)
    for i in turns[-1:] if last_only else turns:
        # the bare generation prompt: a non-thinking one may pre-fill the empty think block, which the
        # model must learn to write (as the marked template labels it)
        before = _render_fitted(tokenizer, messages[:i], add_generation_prompt=True, **{**kw, "enable_thinking": True})
        upto = _render_fitted(tokenizer, messages[:i + 1], **kw)
        start, end = len(before), _agreeing(ids, upto, ends)
        if ids[:start] != before or end is None or end <= start:
            raise FlowError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')}: its chat template has no {{% generation %}} "
                f"markers and renders messages[{i}] differently inside the whole conversation than at its end, so "
                "its assistant tokens cannot be located; give the tokenizer a chat template with {% generation %} "
                "markers, or (SFT) train on the last assistant turn only: assistant_loss: last")
        closing = [j for j in range(start, end) if ids[j] in ends]
        if closing:
            end = closing[-1] + 1
        mask[start:end] = [1] * (end - start)
    return mask


def template_renders(tokenizer: Any) -> dict[str, bool]:
    """Which optional message fields the chat template writes out, probed once per template with marker
    strings: `reasoning` (an assistant turn's `reasoning_content`), `tools` (tool definitions) and
    `tool_calls` (an assistant turn's calls). flowlm's template and Qwen3's write all three; a plain ChatML
    template none. A probe the template refuses gives no verdict (True)."""
    def probe(tok: Any) -> dict[str, bool]:
        tool = {"type": "function", "function": {"name": "flowlmprobetool", "description": "probe",
                                                 "parameters": {"type": "object", "properties": {}}}}
        call = {"type": "function", "function": {"name": "flowlmprobecall", "arguments": {}}}
        return {
            "reasoning": _writes(tok, "flowlmprobereasoning", [_PROBE_USER, {
                "role": "assistant", "content": "Hi", "reasoning_content": "flowlmprobereasoning"}]),
            "tools": _writes(tok, "flowlmprobetool", [_PROBE_USER], tools=[tool], add_generation_prompt=True),
            "tool_calls": _writes(tok, "flowlmprobecall", [_PROBE_USER, {"role": "assistant", "content": "",
                                                                        "tool_calls": [call]}]),
            # gpt-oss's template reads an assistant turn's reasoning from `thinking` (no verdict: False)
            "thinking": _writes(tok, "flowlmprobethinking", [_PROBE_USER, {
                "role": "assistant", "content": "Hi", "thinking": "flowlmprobethinking"}], refused=False),
        }

    return _probed(tokenizer, "renders", probe)


def tool_format(tokenizer: Any) -> str | None:
    """How the chat template writes an assistant turn's tool calls, probed once per template: "olmo3" (it
    writes OLMo 3's `function_calls` text in `<function_calls>` tags), "hermes" (it writes OpenAI-style
    `tool_calls` as `<tool_call>` JSON: flowlm's, Qwen3's), "qwen3_xml" (as `<function=NAME>` XML:
    Qwen3-Coder's), "mistral" (after `[TOOL_CALLS]`: Mistral's), "deepseek" (in `<｜tool▁call▁begin｜>`
    blocks: DeepSeek's), "harmony" (as a message to `functions.NAME`: gpt-oss's), "pythonic" (as a Python
    list of calls: Llama 3.2's and 4's pythonic templates),
    "llama3_json" (as a bare JSON object with `parameters`: Llama 3's and 4's), "other" (it writes them some
    other way), or None (it writes no calls, or there is no template). The probe call carries an id
    (Mistral's templates refuse calls without one). `flowlm.tools.formats` has the formats."""
    if not getattr(tokenizer, "chat_template", None):
        return None

    def probe(tok: Any) -> str | None:
        def text(message: dict[str, Any]) -> str:
            try:
                return tok.apply_chat_template([_PROBE_USER, message], tokenize=False)
            except Exception:  # noqa: BLE001 - a template that refuses the probe does not write that form
                return ""

        if "<function_calls>flowlmprobecall()" in text({"role": "assistant", "content": "",
                                                        "function_calls": "flowlmprobecall()"}):
            return "olmo3"
        written = text({"role": "assistant", "content": "", "tool_calls": [
            {"id": "flowlmpid", "type": "function", "function": {"name": "flowlmprobecall", "arguments": {}}}]})
        if "flowlmprobecall" not in written:
            return None
        if "<function=flowlmprobecall>" in written:
            return "qwen3_xml"
        if "[TOOL_CALLS]" in written:
            return "mistral"
        if "<｜tool▁call▁begin｜>" in written:
            return "deepseek"
        if "to=functions.flowlmprobecall" in written:
            return "harmony"
        if "<tool_call>" in written:
            return "hermes"
        if re.search(r"\[\s*flowlmprobecall\(\s*\)\s*\]", written):
            return "pythonic"
        return "llama3_json" if re.search(r'\{\s*"name":\s*"flowlmprobecall",\s*"(parameters|arguments)"', written) \
            else "other"

    return _probed(tokenizer, "tool_format", probe)


def fit_to_template(tokenizer: Any, messages: Sequence[dict[str, Any]],
                    tools: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """`(messages, tools)` as the chat template can write them, so no field of the data is dropped silently:
    - tool use in the template's schema (`flowlm.tools.formats`): an OLMo 3 template gets the tools in the
      system turn's `functions`, calls as `function_calls` text and answers as `environment` turns; any other
      template gets OpenAI's schema (a row written in OLMo 3's is converted), and Mistral's its call ids
      (`with_call_ids`: calls without an id get one, answers their call's);
    - a template that ignores `reasoning_content` gets each trace in `thinking` if it reads that (gpt-oss's),
      else inline (plain ChatML), as the content's leading `<think>\n…\n</think>\n\n` block (the
      R1-distill convention), rather than losing it;
    - `tools` or assistant `tool_calls` that the template would not write are a FlowError (there is no
      neutral way to invent its tool format): use a template that renders them.
    Converting twice changes nothing, so renderings of a conversation's prefixes agree with the whole."""
    if not getattr(tokenizer, "chat_template", None):
        return list(messages), tools
    from flowlm.tools.messages import to_olmo3_messages, to_openai_messages, with_call_ids

    renders = template_renders(tokenizer)
    name = getattr(tokenizer, "name_or_path", "?") or "?"
    if tool_format(tokenizer) == "olmo3":
        messages, tools = to_olmo3_messages(list(messages), tools), None
    else:
        messages, tools = to_openai_messages(list(messages), tools)
        if tool_format(tokenizer) == "mistral":
            messages = with_call_ids(messages)
        if tools and not renders["tools"]:
            raise FlowError(f"the chat template of {name} does not write tool definitions (`tools`), so they would "
                            "be left out of the rendered conversation; use a template that renders tools")
        if not renders["tool_calls"] and any(m.get("role") == "assistant" and m.get("tool_calls") for m in messages):
            raise FlowError(f"the chat template of {name} does not write assistant `tool_calls`, so those turns "
                            "would render empty; use a template that renders tool calls")
    if renders["reasoning"]:
        return messages, tools
    if renders["thinking"]:  # gpt-oss's template: the trace goes in `thinking`
        return [{**{k: v for k, v in m.items() if k != "reasoning_content"}, "thinking": m["reasoning_content"]}
                if m.get("role") == "assistant" and isinstance(m.get("reasoning_content"), str)
                and m["reasoning_content"].strip() else m for m in messages], tools
    out = []
    for m in messages:
        trace = m.get("reasoning_content") if m.get("role") == "assistant" else None
        if isinstance(trace, str) and trace.strip():
            m = {k: v for k, v in m.items() if k != "reasoning_content"}
            m["content"] = f"<think>\n{trace.strip()}\n</think>\n\n{m.get('content') or ''}"
        out.append(m)
    return out, tools


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    enable_thinking: bool = True,
    add_generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
    last_only: bool = False,
) -> tuple[list[int], list[int]]:
    """Token ids of a rendered conversation and a 0/1 mask of the tokens inside assistant turns (of the last
    assistant message only with `last_only`).

    With flowlm's template (or any with `{% generation %}` markers) the mask comes from the template's
    generation spans mapped to tokens through the fast tokenizer's character offsets (no string search
    over the rendered text): it covers each assistant turn's think block, content, tool calls and closing
    `<|im_end|>`, and excludes the `<|im_start|>assistant\\n` header and everything outside assistant
    turns. Other templates (a Hugging Face checkpoint's own) get the same spans by rendering each
    assistant message's prefix (`_prefix_mask`).
    """
    messages, tools = fit_to_template(tokenizer, messages, tools)
    kw = {"tools": tools, "enable_thinking": enable_thinking}
    if not has_generation_markers(tokenizer):  # (also a tokenizer without a template: render_ids says so)
        ids = _render_fitted(tokenizer, messages, add_generation_prompt=add_generation_prompt, **kw)
        return ids, _prefix_mask(tokenizer, messages, ids, last_only=last_only, **kw)
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
        add_generation_prompt=add_generation_prompt, **kw,
    )
    ids = list(out["input_ids"])
    mask = [int(x) for x in out["assistant_masks"]]
    return ids, (last_turn_mask(mask) if last_only else mask)


def last_turn_mask(mask: Sequence[int]) -> list[int]:
    """Keep only the last run of 1s of an assistant mask (the final assistant turn: turns are separated by
    the unmasked `\\n<|im_start|>role\\n` between them)."""
    end = len(mask)
    while end and not mask[end - 1]:
        end -= 1
    start = end
    while start and mask[start - 1]:
        start -= 1
    return [0] * start + [1] * (end - start) + [0] * (len(mask) - end)
