"""A rollout engine whose completions may call tools, token for token: what RL, eval and `flowlm generate`
sample from when tools are offered.

    engine = ToolEngine(Engine(model, tok), select_tools(["calculator"]), max_calls=3)
    results = engine.generate([prompt_ids], [SamplingParams(n=8, max_new_tokens=512, seed=0)])

`ToolEngine` wraps any backend with the engine interface (`submit` / `step` / `has_unfinished`; the
native engine or vLLM) and keeps it: `generate`, `stream`, `update_weights`, `version` and `stats` work
as before, so the RL source, its async rollout units and its Ray actors drive it unchanged. A request
with `n` samples is prefilled once; then each sample goes on alone:

1. a turn ends (the reply ends its turn, or is cut). If its answer part (after `</think>`) holds calls in the
   chat template's format (`flowlm.tools.formats`: `<tool_call>` JSON for flowlm's and Qwen3's templates,
   `<function_calls>` Python calls for OLMo 3's, `<function=...>` XML for Qwen3-Coder's (its values typed by
   the tools' schemas), a reply of JSON calls or a Python list for Llama's, `[TOOL_CALLS]` for Mistral's,
   `<｜tool▁call▁begin｜>` blocks for DeepSeek's), the reply ended its turn, and fewer
   than `max_calls` calls and tool turns were made, the calls run (`flowlm.tools.builtin`; a malformed
   call or an unknown tool is answered `error: ...`). They run in a pool of `workers` threads while the
   engine goes on decoding the other sequences (a sandboxed `python` call takes 20-50 ms on a 2-core
   machine, several decode steps; `benchmarks/tool_rollouts.py`); the sample waits, and goes on at the first step after its answers are in. `workers=0` runs
   them inline, inside the step, so the schedule depends on nothing but the requests and their seeds;
2. the tool turn is appended **as token ids**: the chat template's rendering of the tool messages and
   of the next assistant generation prompt (`tool_turn_text`; with each call's id where the template writes
   ids: the one the model wrote, else `call_id(n)`), tokenized on its own. Nothing the model
   generated is decoded and re-tokenized: the completion's ids are the sampled ids, then the tool turn's,
   then the next turn's sampled ids, and so on (open-instruct's and veRL's tool rollouts do the same);
3. the sample is submitted again with its whole prefix (prompt + completion so far), `n = 1`, a seed
   derived from the request's seed, the sample's index and the turn, and `max_new_tokens` what is left
   of the request's budget. The budget counts tool tokens too: `max_new_tokens` bounds the whole completion,
   as it bounds what the learner trains on. A tool turn that does not fit the budget or the context ends
   the sample, cut after the call (`finish_reason` "length"; the answers are not appended).

A request's `Result` comes out of `step()` when all its samples are done. Each `Completion` holds the
whole trajectory: `tokens`, `logprobs` and `versions` per token (tool tokens: log-prob 0.0 and the
version of the token before them, so the oldest version is still the minimum), `tool_mask` (1 for a tool
turn's tokens: the learner masks them out of the loss, open-instruct's `mask_tool_use`), `tool_calls` and
`tool_errors` (answers that began `error:`), and `trajectory`: the messages after the prompt, each
assistant turn with its `reasoning_content` and `tool_calls` and each tool answer as a `tool` message
(what SFT on the conversation would train on). `text` and `finish_reason` are the last turn's (the reply a
verifier scores, as without tools). A reply that still calls tools once the limit is reached ends the
sample: its calls are not run (its message has no `tool_calls`; its content keeps the call text).
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field, replace
from typing import Any

from flowlm.errors import ConfigError, FlowError
from flowlm.generate.driver import Driver
from flowlm.generate.params import FINISH_LENGTH, FINISH_STOP, Completion, Result, SamplingParams, Timings
from flowlm.generate.prompts import is_chat, to_prompt_ids
from flowlm.model import harmony
from flowlm.model.tokenizer import fit_to_template, tool_format, turn_end_ids
from flowlm.post.teachers import split_reasoning
from flowlm.tools.builtin import Tool
from flowlm.tools.formats import FORMATS, ToolFormat
from flowlm.tools.messages import call_id, openai_calls

_SENTINEL = "\x00flowlm-tool-answer-{}\x00"
_ID_SENTINEL = "Zzq{:04d}Qq"  # a call id's place (9 letters and digits, as Mistral's templates require)
_JSON_SENTINEL = "\x01flowlm-json-answer-{}\x01"  # an answer the template writes as a JSON string (gpt-oss's)
_ESCAPED = re.compile(re.escape(json.dumps(_SENTINEL)[1:-1]).replace("\\{\\}", "(\\d+)"))
_PLACEHOLDER = re.compile("\x00flowlm-tool-answer-(\\d+)\x00|Zzq(\\d{4})Qq|\x01flowlm-json-answer-(\\d+)\x01")


def tool_turn_text(tokenizer: Any, names: list[str], enable_thinking: bool = True) -> str:
    """The text the chat template writes after an assistant turn that called tools: the tool messages
    (each answer, and each call id a template writes, a placeholder that `fill_tool_turn` replaces) and
    the next assistant generation prompt. Found by rendering a probe conversation and cutting after the
    end-of-turn token that closes the calling turn, so any template works (flowlm's, Qwen3's, OLMo 3's,
    Mistral's)."""
    calls = [{"id": _ID_SENTINEL.format(i), "type": "function", "function": {"name": n, "arguments": {}}}
             for i, n in enumerate(names)]
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": calls},
                *({"role": "tool", "name": n, "tool_call_id": _ID_SENTINEL.format(i), "content": _SENTINEL.format(i)}
                  for i, n in enumerate(names))]
    messages, _ = fit_to_template(tokenizer, messages, None)  # in the template's schema (OLMo 3: environment turns)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=enable_thinking)
    text = _ESCAPED.sub(lambda m: _JSON_SENTINEL.format(m.group(1)), text)  # written with `tojson`
    first = min((at for at in (text.find(_SENTINEL.format(0)), text.find(_JSON_SENTINEL.format(0))) if at >= 0),
                default=-1)
    ends = [tokenizer.convert_ids_to_tokens(t) for t in turn_end_ids(tokenizer)]
    cut = max((text.rfind(e, 0, first) + len(e) if text.rfind(e, 0, first) >= 0 else -1 for e in ends), default=-1)
    if first < 0 or cut < 0:
        raise FlowError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')}: its chat template does not render "
                        "tool messages after an assistant turn, so tool answers cannot be appended to a rollout")
    return text[cut:]


def tool_answers(calls: list[dict[str, Any]], problems: list[str], tools: dict[str, Tool]) -> list[tuple[str, str]]:
    """(tool name, its answer) per call, then one `error:` answer per malformed call."""
    out = []
    for call in calls:
        tool = tools.get(call["name"])
        out.append((call["name"], tool.run(call["arguments"]) if tool else
                    f"error: no tool named {call['name']!r} (tools: {', '.join(tools)})"))
    return out + [("error", f"error: {p}") for p in problems]


def fill_tool_turn(template: str, answers: list[str], ids: list[str] | None = None) -> str:
    """`template` (from `tool_turn_text`) with each placeholder replaced by its answer, and each call id's by
    `ids` (default `call_id(i)`), in one pass (an answer that prints a placeholder's text stays as it is)."""
    def fill(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return answers[int(m.group(1))]
        if m.group(3) is not None:  # inside a JSON string the template wrote
            return json.dumps(answers[int(m.group(3))], ensure_ascii=False)[1:-1]
        i = int(m.group(2))
        return ids[i] if ids is not None and i < len(ids) else call_id(i)

    return _PLACEHOLDER.sub(fill, template)


def template_tool_format(tokenizer: Any) -> ToolFormat:
    """The format the tokenizer's chat template writes calls in (`flowlm.tools.formats`), which is the one its
    model was trained to write; FlowError for a template that writes calls another way, or none."""
    name = tool_format(tokenizer)
    if name == "harmony":  # gpt-oss: replies are read in flowlm's text form, calls as <tool_call> JSON
        return FORMATS["hermes"]
    if name in FORMATS:
        return FORMATS[name]
    what = "writes tool calls in a format flowlm does not read" if name else "does not write tool calls"
    raise FlowError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?') or '?'}: its chat template {what}; flowlm's "
                    "tool loop reads <tool_call> JSON (hermes: flowlm's, Qwen3's), <function=...> XML calls "
                    "(Qwen3-Coder's), <function_calls> Python calls (OLMo 3's), replies that are JSON calls or a "
                    "Python list of calls (Llama 3's and 4's), [TOOL_CALLS] (Mistral's) and <｜tool▁call▁begin｜> "
                    "blocks (DeepSeek's)")


@dataclass
class _Sample:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    tool_mask: list[int] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    errors: int = 0
    turns: int = 0
    text: str = ""
    finish_reason: str = ""
    done: bool = False

    def completion(self) -> Completion:
        return Completion(tokens=self.tokens, logprobs=self.logprobs, versions=self.versions, text=self.text,
                          finish_reason=self.finish_reason, tool_mask=self.tool_mask, tool_calls=self.calls,
                          tool_errors=self.errors, trajectory=self.messages)

    def end(self, text: str, finish_reason: str, message: dict[str, Any]) -> None:
        self.text, self.finish_reason, self.done = text, finish_reason, True
        self.messages.append(message)


@dataclass
class _Request:
    rid: int
    tag: Any
    params: SamplingParams
    prompt_ids: list[int] = field(default_factory=list)
    samples: list[_Sample] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)


class ToolEngine(Driver):
    """The wrapped engine, with tool calls run between turns (see the module docstring)."""

    def __init__(self, engine: Any, tools: dict[str, Tool], *, max_calls: int = 5,
                 enable_thinking: bool = True, workers: int = 8) -> None:
        if max_calls < 1:
            raise ConfigError(f"tool rollouts: max_calls must be at least 1, not {max_calls}")
        if workers < 0:
            raise ConfigError(f"tool rollouts: workers must be at least 0, not {workers}")
        self.inner, self.tools, self.max_calls = engine, tools, max_calls
        self._schemas = [t.schema for t in tools.values()]  # types the values of calls written as text (XML)
        self.workers = workers  # threads that run calls while the engine decodes (0: inline, in `step`)
        self._pool: ThreadPoolExecutor | None = None  # started by the first call
        self._running: list[tuple[Future, _Request, int, dict[str, Any], int]] = []
        self.enable_thinking = enable_thinking
        tok = engine.tokenizer
        self._ends = [tok.convert_ids_to_tokens(t) for t in turn_end_ids(tok)] + [tok.eos_token or ""]
        self._turn_templates: dict[tuple[tuple[str, ...], bool], str] = {}
        self._requests: dict[int, _Request] = {}
        self._next_id = 0
        self._ready: list[Result] = []
        self.format = template_tool_format(tok)
        self._harmony = harmony.is_harmony(tok)
        tool_turn_text(tok, ["probe"], enable_thinking)  # fail at build time on a template without tool turns

    def __getattr__(self, name: str) -> Any:  # version, stats, tokenizer, context, update_weights, prepare, ...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _ids(self, prompt: Any) -> tuple[Any, str | None]:
        """The prompt to hand the engine: chat messages rendered with the tools listed in the system turn
        (token ids as they are: their caller rendered them, `to_prompt_ids(..., tools=...)`), or why not."""
        if not is_chat(prompt):
            return prompt, None
        try:
            return to_prompt_ids(prompt, self.inner.tokenizer, self.enable_thinking,
                                 tools=[t.schema for t in self.tools.values()]), None
        except Exception as exc:  # untrusted input: reported, as the engine reports it
            return [], f"bad prompt: {exc}"

    def prepare(self, prompt: Any, params: SamplingParams) -> tuple[list[int], str | None]:
        """As the engine's `prepare`, for what `submit` sends: chat messages with the tools listed."""
        ids, problem = self._ids(prompt)
        return ([], problem) if problem else self.inner.prepare(ids, params)

    def submit(self, prompt: Any, params: SamplingParams | None = None, *, tag: Any = None) -> int:
        """As the engine's `submit` (a problem comes back on the result); chat messages get the tools listed."""
        params = params or SamplingParams()  # a turn ends at the end-of-turn token, whatever the prompt's form
        params = replace(params, stop_token_ids=tuple(dict.fromkeys((*params.stop_token_ids,
                                                                     *turn_end_ids(self.inner.tokenizer)))))
        rid, self._next_id = self._next_id, self._next_id + 1
        req = _Request(rid, tag, params, timings=Timings(submitted=time.perf_counter()))
        req.samples = [_Sample() for _ in range(params.n)]
        self._requests[rid] = req
        ids, problem = self._ids(prompt)
        if problem:
            self._finish(req, error=problem)
        else:
            self.inner.submit(ids, params, tag=(rid, None))
        return rid

    def has_unfinished(self) -> bool:
        return bool(self._requests) or bool(self._ready)

    def step(self) -> list[Result]:
        """Continue the samples whose tool answers are in, then one engine step; the requests all of whose
        samples are done. With only tool calls running, waits (briefly) for one to finish instead."""
        self._collect(wait=not self.inner.has_unfinished())
        for res in self.inner.step() if self.inner.has_unfinished() else []:
            rid, index = res.tag
            req = self._requests[rid]
            if index is None:  # the first turn of every sample
                req.prompt_ids, req.timings = list(res.prompt_ids), res.timings
                if not res.ok:
                    self._finish(req, error=res.error)
                    continue
                for j, comp in enumerate(res.completions):
                    self._turn(req, j, comp)
            elif not res.ok:  # a continuation the engine refused: the sample ends, cut, with its last reply
                req.samples[index].finish_reason, req.samples[index].done = FINISH_LENGTH, True
            else:
                self._turn(req, index, res.completions[0])
            self._finish_if_done(req)
        done, self._ready = self._ready, []
        return done

    def close(self) -> None:
        """Stop the tool threads (calls still running are left to end on their own), then the engine."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if hasattr(self.inner, "close"):
            self.inner.close()

    def _collect(self, wait: bool) -> None:
        """Hand every finished tool call's answers to its sample (in the order the calls were made)."""
        if not self._running:
            return
        if wait:
            futures_wait([f for f, *_ in self._running], timeout=0.05, return_when=FIRST_COMPLETED)
        running = []
        for item in self._running:
            future, req, j, called, ncalls = item
            if not future.done():
                running.append(item)
                continue
            try:
                answers = future.result()
            except Exception as exc:  # noqa: BLE001 - a tool never raises (Tool.run); this is the last guard
                answers = [("error", f"error: {type(exc).__name__}: {exc}")]
            self._answered(req, j, called, ncalls, answers)
            self._finish_if_done(req)
        self._running = running

    def _finish_if_done(self, req: _Request) -> None:
        if req.rid in self._requests and all(s.done for s in req.samples):
            self._finish(req)

    def _finish(self, req: _Request, error: str | None = None) -> None:
        del self._requests[req.rid]
        req.timings.finished = time.perf_counter()
        comps = [] if error else [s.completion() for s in req.samples]
        self._ready.append(Result(req.rid, req.prompt_ids, comps, req.timings, error=error, tag=req.tag))

    def _turn(self, req: _Request, j: int, comp: Completion) -> None:
        """Take one finished turn of sample `j`: end the sample, or run its calls and submit the next turn."""
        s = req.samples[j]
        s.tokens += comp.tokens
        s.logprobs += comp.logprobs
        s.versions += comp.versions
        s.tool_mask += [0] * len(comp.tokens)
        s.turns += 1
        s.text = comp.text
        raw = self.inner.tokenizer.decode(comp.tokens, skip_special_tokens=False)
        if self._harmony:
            raw = harmony.canonical(raw)
        for end in self._ends:
            if end and raw.endswith(end):
                raw = raw[: -len(end)]
        reply = split_reasoning(raw, comp.finish_reason)
        calls, problems = self.format.parse(reply["content"], self._schemas)
        if not (calls or problems) or comp.finish_reason != FINISH_STOP or s.calls >= self.max_calls \
                or s.turns > self.max_calls:
            s.end(comp.text, comp.finish_reason, {"role": "assistant", "content": reply["content"],
                                                  "reasoning_content": reply["reasoning"]})
            return
        # each answer's call id: the one the model wrote (Mistral's layouts), else a fresh one
        ids = [c.get("id") or call_id(s.calls + k) for k, c in enumerate(calls)]
        ids += [call_id(s.calls + len(calls) + k) for k in range(len(problems))]
        called = {"role": "assistant", "content": self.format.text_before_calls(reply["content"]),
                  "reasoning_content": reply["reasoning"],
                  "tool_calls": openai_calls([{**c, "id": i} if self.format.ids else {**c, "id": None}
                                              for c, i in zip(calls, ids)])}
        called["ids"] = ids
        if not self.workers:
            self._answered(req, j, called, len(calls), tool_answers(calls, problems, self.tools))
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="flowlm-tool")
            self._running.append((self._pool.submit(tool_answers, calls, problems, self.tools), req, j, called,
                                  len(calls)))

    def _answered(self, req: _Request, j: int, called: dict[str, Any], ncalls: int,
                  answers: list[tuple[str, str]]) -> None:
        """Sample `j`'s calls are answered: append the tool turn and submit the next turn (or end it, cut)."""
        s = req.samples[j]
        ids = called.pop("ids")
        key = (tuple(name for name, _ in answers), self.enable_thinking)
        if key not in self._turn_templates:
            self._turn_templates[key] = tool_turn_text(self.inner.tokenizer, list(key[0]), self.enable_thinking)
        turn = self.inner.tokenizer.encode(fill_tool_turn(self._turn_templates[key], [t for _, t in answers], ids),
                                           add_special_tokens=False)
        room = req.params.max_new_tokens - len(s.tokens) - len(turn)
        s.calls += ncalls
        s.errors += sum(text.startswith("error:") for _, text in answers)
        if room < 1 or len(req.prompt_ids) + len(s.tokens) + len(turn) + 1 > self.inner.context:
            s.end(s.text, FINISH_LENGTH, called)  # no room for the answers: cut after the call
            return
        s.messages += [called, *({"role": "tool", "name": name, "content": text,
                                  **({"tool_call_id": i} if self.format.ids else {})}
                                 for (name, text), i in zip(answers, ids))]
        s.tokens += turn
        s.logprobs += [0.0] * len(turn)
        s.versions += [s.versions[-1] if s.versions else self.inner.version] * len(turn)
        s.tool_mask += [1] * len(turn)
        seed = None if req.params.seed is None else (req.params.seed * 1_000_003 + j * 1009 + s.turns) % (1 << 31)
        params = replace(req.params, n=1, max_new_tokens=room, seed=seed)
        self.inner.submit(req.prompt_ids + s.tokens, params, tag=(req.rid, j))
