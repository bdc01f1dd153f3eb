"""Teachers: what samples candidate responses for the post-training data builders.

    teacher.sample(prompts, n, thinking=True, seed=0) -> [[{"reasoning": str, "content": str, ...}] * n] * len(prompts)

A prompt is a list of chat messages ending with the user turn to answer. `thinking=False` is Qwen3's
non-thinking mode: `/no_think` is appended to the last user turn and the reasoning comes back empty.
A response may also carry `finish_reason` (`stop`, `length` = cut off by the token budget, `error`)
and `error` (why nothing was generated); the builders count such candidates by reason, never crash.

- `ModelTeacher`: any local checkpoint directory `flowlm.generate.Engine.from_pretrained` accepts (or
  a model + tokenizer), through the rollout engine; the output is split at `</think>` with the
  verifiers' own think parsing (`flowlm.verify.thinking`).
- `ProceduralTeacher`: the built-in procedural tasks (`flowlm.data.tasks`) answered from their worked
  solutions, the miniature's strong model. `error_rate` corrupts a deterministic share of the
  candidates, each with one defect a Qwen3 response filter must catch (`NOISE_KINDS`).
- `WeakProceduralTeacher`: the miniature's weak model (OLMo 3's Qwen3-0.6B role in delta learning):
  a short sketch and a plausible final answer that is right with probability `skill ** steps`.

`builtin_rows(n)` makes prompt rows from the training split of the built-in tasks (never held out).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field

from flowlm.config import Strict
from flowlm.errors import ConfigError, FlowError
from flowlm.tools.builtin import ToolNames
from flowlm.verify.rows import prompt_messages  # re-exported: the chat prompt of a row
from flowlm.verify.thinking import CLOSE, OPEN

Message = dict[str, Any]
Response = dict[str, Any]
NO_THINK, THINK = "/no_think", "/think"


class Teacher(Protocol):
    """Samples `n` responses per prompt; `name` identifies it in the output rows."""

    name: str

    def sample(self, prompts: list[list[Message]], n: int, *, thinking: bool, seed: int,
               functions: list[list[dict[str, Any]] | None] | None = None) -> list[list[Response]]:
        """`functions[j]`: the functions prompt j lists (a function-calling row's own; the call is the answer)."""
        ...


def ask(teacher: Teacher, prompts: list[list[Message]], n: int, *, thinking: bool, seed: int,
        functions: Sequence[list[dict[str, Any]] | None] = ()) -> list[list[Response]]:
    """`teacher.sample`, given `functions` only when some prompt lists its own (so a teacher written before
    `sample` took them still answers every other row)."""
    extra = {"functions": list(functions)} if any(functions) else {}
    return teacher.sample(prompts, n, thinking=thinking, seed=seed, **extra)


class TeacherCfg(Strict):
    """How the CLI builds a teacher from `--teacher/--strong/--weak PATH|procedural|weak`."""

    temperature: float = 0.7
    """Sampling temperature of model teachers (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus sampling of model teachers."""
    max_new_tokens: int = 1024
    """Token budget per response; a response cut by it is dropped as `truncated`."""
    max_slots: int = 64
    """Sequences a model teacher decodes together (also the largest n)."""
    error_rate: float = 0.0
    """`procedural`: share of corrupted candidates (0 = every candidate is the worked solution)."""
    skill: float = 0.7
    """`weak`: per-step chance of getting a step right; a final answer is right with skill ** steps."""
    tools: ToolNames = []
    """Model teachers, `flowlm post coldstart`: tools (built-in calculator, python; `mcp:SERVER`) the teacher may
    call while it answers (`flowlm.tools.engine`); a kept response is the whole trajectory, and its row lists
    the tools."""
    max_tool_calls: int = Field(5, ge=1)
    """With `tools`: calls per response at most."""
    tool_workers: int = Field(8, ge=0)
    """With `tools`: threads that run calls beside decoding (0: inline, a schedule that depends on the seeds alone)."""
    backend: Literal["native", "vllm"] = "native"
    """Model teachers: flowlm's rollout engine, or vLLM (a CUDA machine and `pip install 'flowlm[vllm]'`)."""
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    """`vllm`: the GPU memory share of each model teacher; None: 0.85 split evenly among the command's model
    teachers (each is its own vLLM engine on the one GPU)."""



# --- messages and responses -------------------------------------------------------------------------


def user_text(messages: Sequence[Message]) -> str:
    """The last user turn without a trailing `/think` or `/no_think` switch."""
    text = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    return _SWITCH.sub("", text).strip()


_SWITCH = re.compile(r"\s*/(?:no_)?think\s*$")


_ANY_SWITCH = re.compile(r"(?<!\S)/(no_)?think(?!\S)")


def wants_no_think(messages: Sequence[Message]) -> bool:
    """Is non-thinking mode asked for? Qwen3's soft switches: the latest `/think` or `/no_think` in the
    user turns decides (a switch holds for the later turns of a conversation); none means thinking."""
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            hits = _ANY_SWITCH.findall(m["content"])
            if hits:
                return hits[-1] == "no_"
    return False


def with_mode(messages: Sequence[Message], thinking: bool) -> list[Message]:
    """`messages` with `/no_think` at the end of the last user turn for non-thinking mode (Qwen3 convention);
    thinking mode leaves the messages as they are."""
    out = [dict(m) for m in messages]
    if thinking or wants_no_think(out):
        return out
    last = max(i for i, m in enumerate(out) if m.get("role") == "user")
    out[last]["content"] = f"{out[last]['content'].rstrip()} {NO_THINK}"
    return out


def split_reasoning(text: str, finish_reason: str = "stop") -> Response:
    """Model output -> `{reasoning, content, finish_reason}`: the think block (opening tag optional, as
    when the template puts `<think>` in the prompt) and the answer after the last `</think>`; an
    unclosed think block is all reasoning and no answer (truncated mid-thought, as the verifiers read it)."""
    if CLOSE in text:
        head, content = text.rsplit(CLOSE, 1)
        reasoning = head.split(OPEN, 1)[1] if OPEN in head else head
    elif OPEN in text:
        reasoning, content = text.split(OPEN, 1)[1], ""
    else:
        reasoning, content = "", text
    return {"reasoning": reasoning.strip(), "content": content.strip(), "finish_reason": finish_reason}


def completion_text(response: Mapping[str, Any]) -> str:
    """A response as one completion string for the verifiers: `<think>reasoning</think>` then the content."""
    return f"{OPEN}\n{response.get('reasoning') or ''}\n{CLOSE}\n\n{response.get('content') or ''}"


def call_message(response: Mapping[str, Any], functions: Any = None) -> Message:
    """The assistant turn of a function-calling response: its calls (any format, `flowlm.tools.formats`; values
    written as text typed by `functions`, the functions the prompt listed) as structured `tool_calls` and the
    text before them as its content, so any chat template writes them its own way; a reply with no
    well-formed calls stays text (`assistant_message`)."""
    from flowlm.tools.formats import format_in
    from flowlm.tools.messages import openai_calls

    msg = assistant_message(response)
    fmt = format_in(msg["content"])
    calls, problems = fmt.parse(msg["content"], functions)
    if calls and not problems:
        msg.update(content=fmt.text_before_calls(msg["content"]),
                   tool_calls=openai_calls(calls))
    return msg


def assistant_message(response: Mapping[str, Any]) -> Message:
    """The assistant turn of a training row (`reasoning_content` empty in non-thinking mode)."""
    return {"role": "assistant", "content": response.get("content") or "",
            "reasoning_content": response.get("reasoning") or ""}


def _error(msg: str, n: int) -> list[Response]:
    return [{"reasoning": "", "content": "", "finish_reason": "error", "error": msg} for _ in range(n)]


# --- model teacher ------------------------------------------------------------------------------------


class ModelTeacher:
    """Samples from a checkpoint with the rollout engine (`flowlm.generate.Engine`).

    `source` is a checkpoint directory (`Engine.from_pretrained`: flowlm / HF Olmo3 natively, any other
    local HF causal LM through transformers); or pass `model=` and `tokenizer=`. `backend="vllm"` samples
    with vLLM instead (`flowlm.generate.vllm_backend`), taking `gpu_memory_utilization` of the GPU. The
    tokenizer's chat template renders each prompt in the requested mode (`enable_thinking`), and generation stops at
    the end-of-turn token `<|im_end|>` when the tokenizer has one. With `tools` (built-in tool names) the
    engine runs the teacher's calls between its turns (`flowlm.tools.engine`), the prompts list them, and each
    response carries its `trajectory` (see `_response`).
    """

    def __init__(self, source: str | Path | None = None, *, model: Any = None, tokenizer: Any = None,
                 temperature: float = 0.7, top_p: float = 1.0, max_new_tokens: int = 1024, max_slots: int = 64,
                 name: str | None = None, tools: list[str] | None = None, max_tool_calls: int = 5,
                 tool_workers: int = 8, backend: str = "native", gpu_memory_utilization: float = 0.85) -> None:
        from flowlm.generate.engine import Engine, GenerateConfig
        from flowlm.generate.params import SamplingParams
        from flowlm.model.tokenizer import turn_end_ids

        SamplingParams.checked(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        config = GenerateConfig(max_slots=max_slots)
        if (source is None) == (model is None):
            raise FlowError("ModelTeacher: give a checkpoint directory or a model, not both or neither")
        if backend == "vllm":
            from flowlm.generate.vllm_backend import VLLMEngine

            share = {"max_slots": max_slots, "gpu_memory_utilization": gpu_memory_utilization}
            self.engine = VLLMEngine(source, tokenizer, **share) if source is not None \
                else VLLMEngine.from_policy(model, tokenizer, **share)
        elif backend == "native":
            self.engine = Engine.from_pretrained(source, config) if source is not None \
                else Engine(model, tokenizer, config)
        else:
            raise FlowError(f"ModelTeacher: backend must be native or vllm, not {backend!r}")
        self.tokenizer = self.engine.tokenizer
        if self.tokenizer is None:
            raise FlowError(f"{source}: no tokenizer.json beside the model (a teacher needs the chat template)")
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.name = name or (Path(source).name if source is not None else type(model).__name__)
        self.stop_ids = turn_end_ids(self.tokenizer)
        self.tool_schemas: list[dict[str, Any]] | None = None  # with tools: what the prompts (and rows) list
        if tools:
            from flowlm.tools.builtin import usable_tools
            from flowlm.tools.engine import ToolEngine

            offered = usable_tools(tools)
            self.engine = ToolEngine(self.engine, offered, max_calls=max_tool_calls, workers=tool_workers)
            self.tool_schemas = [t.schema for t in offered.values()]

    def sample(self, prompts: list[list[Message]], n: int, *, thinking: bool, seed: int,
               functions: list[list[dict[str, Any]] | None] | None = None) -> list[list[Response]]:
        from flowlm.generate.params import SamplingParams
        from flowlm.generate.prompts import to_prompt_ids

        if functions and any(functions) and self.tool_schemas is not None:
            raise ConfigError(f"teacher {self.name}: rows that list their own functions (`tools`: the call is the "
                              "answer, nothing runs) and teacher.tools (tools that run): use one or the other")
        order: dict[int, int] = {}
        out: list[list[Response]] = [[] for _ in prompts]
        for j, msgs in enumerate(prompts):
            params = SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p,
                                    max_new_tokens=self.max_new_tokens, stop_token_ids=self.stop_ids,
                                    seed=seed + j * n)  # completion i of prompt j: seed + j*n + i
            try:
                ids = to_prompt_ids(with_mode(msgs, thinking), self.tokenizer, enable_thinking=thinking,
                                    tools=(functions[j] if functions else None) or self.tool_schemas)
            except Exception as exc:  # noqa: BLE001 - a prompt the template rejects is one bad row
                out[j] = _error(f"bad prompt: {str(exc)[:200]}", n)
                continue
            order[self.engine.submit(ids, params)] = j
        if self.tool_schemas is not None:
            self.engine.enable_thinking = thinking  # the mode of the generation prompt after each tool turn
        for result in self.engine.stream():
            j = order[result.request_id]
            if result.error:
                out[j] = _error(result.error, n)
            else:
                out[j] = [_response(c) for c in result.completions]
        return out


def _response(c: Any) -> Response:
    """A completion as a response. With tools, `content` is the last reply's answer, `reasoning` every turn's
    reasoning joined (what the response filters read), and `trajectory` the messages to train on."""
    resp = split_reasoning(c.text, c.finish_reason)
    if c.trajectory is not None:
        turns = [str(m.get("reasoning_content") or "").strip() for m in c.trajectory if m["role"] == "assistant"]
        resp.update(reasoning="\n\n".join(t for t in turns if t), trajectory=c.trajectory, tool_calls=c.tool_calls)
    return resp


# --- procedural teachers ------------------------------------------------------------------------------

NOISE_KINDS = ("wrong_answer", "repetition", "guess", "mismatch", "language_mix")
"""Defects `ProceduralTeacher(error_rate>0)` puts into candidates, one per corrupted candidate:
a wrong final answer (reasoning and answer agree on it), a looping think trace, an answer guessed with
no reasoning, a think trace whose conclusion differs from the final answer, and a reasoning trace
that switches script midway."""


def _item_key(text: str) -> str:
    return " ".join(_SWITCH.sub("", text).split())


def _rng(*parts: Any) -> random.Random:
    return random.Random(hashlib.sha256(repr(parts).encode()).hexdigest())


def final_line(answer: str, solution: str) -> str:
    """The final-answer line of a procedural item (`flowlm.data.builtin` format: `####` for word problems)."""
    if solution.rstrip().splitlines()[-1].startswith("####"):
        return f"The answer is {answer}.\n#### {answer}"
    return f"The answer is \\boxed{{{answer}}}."


def wrong_answer(answer: str, rng: random.Random) -> str:
    """A plausible wrong answer: an integer off by a small amount, or a list with two neighbours swapped."""
    parts = [p.strip() for p in answer.split(",")]
    if len(parts) > 1:
        i = rng.randrange(len(parts) - 1)
        j = next((k for k in range(i, len(parts) - 1) if parts[k] != parts[k + 1]), None)
        if j is not None:
            parts[j], parts[j + 1] = parts[j + 1], parts[j]
            return ", ".join(parts)
        return ", ".join(parts[:-1])
    try:
        return str(int(answer) + rng.choice([-10, -2, -1, 1, 2, 10]))
    except ValueError:
        return answer + "0"


def _steps(solution: str) -> int:
    """Working lines of a worked solution (the final answer line excluded)."""
    return max(1, len([ln for ln in solution.strip().splitlines() if ln.strip()]) - 1)


class _ItemIndex:
    """Worked items by their prompt text (the last user turn, `/no_think` removed)."""

    def __init__(self, items: Iterable[Mapping[str, Any]]) -> None:
        self.items: dict[str, Mapping[str, Any]] = {}
        for it in items:
            if it.get("solution") and it.get("answer") is not None:
                self.items[_item_key(str(it["prompt"]))] = it

    @classmethod
    def rows_to_items(cls, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Items from prompt rows that carry a worked `solution` (and `answer` or a string `ground_truth`)."""
        out = []
        for row in rows:
            answer = row.get("answer", row.get("ground_truth"))
            if not row.get("solution") or not isinstance(answer, (str, int)):
                continue
            try:
                text = user_text(prompt_messages(row))
            except ValueError:
                continue
            out.append({"prompt": text, "answer": str(answer), "solution": row["solution"]})
        return out

    def find(self, messages: Sequence[Message]) -> Mapping[str, Any] | None:
        return self.items.get(_item_key(user_text(messages)))


class _IndexedTeacher:
    """A teacher that answers the built-in items it indexes (by prompt); `_one` makes one response.
    Prompts it has no item for come back as `error` responses."""

    name: str
    missing = "no item for this prompt"
    rng_tag: tuple[str, ...] = ()  # keeps the streams of different teachers apart

    def __init__(self, items: Iterable[Mapping[str, Any]]) -> None:
        self.index = _ItemIndex(items)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], **kwargs: Any) -> Any:
        return cls(_ItemIndex.rows_to_items(rows), **kwargs)

    def sample(self, prompts: list[list[Message]], n: int, *, thinking: bool, seed: int,
               functions: list[list[dict[str, Any]] | None] | None = None) -> list[list[Response]]:
        out = []
        for msgs in prompts:  # (a row with its own functions matches no built-in item: an `error` response)
            item = self.index.find(msgs)
            if item is None:
                out.append(_error(f"{self.name} teacher: {self.missing}", n))
                continue
            out.append([self._one(item, thinking, _rng(*self.rng_tag, seed, item["prompt"], i)) for i in range(n)])
        return out

    def _one(self, item: Mapping[str, Any], thinking: bool, rng: random.Random) -> Response:
        raise NotImplementedError


class ProceduralTeacher(_IndexedTeacher):
    """The strong procedural teacher: thinking mode answers with the worked solution as reasoning and the
    final-answer line as content; non-thinking mode with the worked solution as the answer (as
    `flowlm.data.builtin.sft_examples` does). Prompts it has no item for come back as `error` responses."""

    missing = "no worked solution for this prompt"

    def __init__(self, items: Iterable[Mapping[str, Any]], *, error_rate: float = 0.0,
                 noise: Sequence[str] = NOISE_KINDS, name: str = "procedural") -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise FlowError(f"ProceduralTeacher: error_rate must be in [0, 1], got {error_rate}")
        unknown = set(noise) - set(NOISE_KINDS)
        if unknown or not noise:
            raise FlowError(f"ProceduralTeacher: noise kinds must be among {NOISE_KINDS}, got {list(noise)}")
        super().__init__(items)
        self.error_rate, self.noise, self.name = error_rate, tuple(noise), name

    def _one(self, item: Mapping[str, Any], thinking: bool, rng: random.Random) -> Response:
        answer, solution = str(item["answer"]), str(item["solution"])
        resp = {"reasoning": solution, "content": final_line(answer, solution)} if thinking else \
            {"reasoning": "", "content": solution}
        if rng.random() < self.error_rate:
            resp = corrupt(resp, answer, rng.choice(self.noise), rng)
        return {**resp, "finish_reason": "stop"}


def corrupt(resp: Response, answer: str, kind: str, rng: random.Random) -> Response:
    """`resp` with one defect of `kind` (see `NOISE_KINDS`); the answer is replaced everywhere it is stated."""
    bad = wrong_answer(answer, rng)
    reasoning, content = resp["reasoning"], resp["content"]
    if kind == "wrong_answer":
        return {"reasoning": _swap_final(reasoning, answer, bad), "content": _swap_final(content, answer, bad)}
    if kind == "repetition":
        loop = "Wait, let me recompute that step once more to be sure."
        text = reasoning or content
        times = max(12, 2 * len(text.split()) // len(loop.split()) + 2)  # a degenerate loop outgrows the work
        looped = text.split("\n")[0] + "\n" + "\n".join([loop] * times) + "\n" + text
        return {"reasoning": looped, "content": content} if reasoning else {"reasoning": "", "content": looped}
    if kind == "guess":
        guessed = f"Probably {answer}. The answer is \\boxed{{{answer}}}."
        return {"reasoning": "I guess." if reasoning else "", "content": guessed}
    if kind == "mismatch":
        if not reasoning:  # no think trace to disagree with: fall back to a wrong answer
            return corrupt(resp, answer, "wrong_answer", rng)
        return {"reasoning": _swap_final(reasoning, answer, bad), "content": content}
    if kind == "language_mix":
        lines = (reasoning or content).split("\n")
        mid = len(lines) // 2
        mixed = "\n".join(lines[:mid] + ["接下来我们继续计算,然后检查每一步的结果是否正确。"] * 3 + lines[mid:])
        return {"reasoning": mixed, "content": content} if reasoning else {"reasoning": "", "content": mixed}
    raise ValueError(f"unknown noise kind {kind!r}")


def _swap_final(text: str, answer: str, bad: str) -> str:
    """Replace the stated final answer (boxed, `####`, `The answer is`) by `bad`."""
    text = text.replace(f"\\boxed{{{answer}}}", f"\\boxed{{{bad}}}").replace(f"#### {answer}", f"#### {bad}")
    return text.replace(f"The answer is {answer}.", f"The answer is {bad}.")


class WeakProceduralTeacher(_IndexedTeacher):
    """The weak procedural teacher: a one-step sketch and a plausible, often wrong final answer.

    A response to an item with `s` working steps is right with probability `skill ** s` (each step a
    chance to slip), decided deterministically from (seed, prompt, sample index); wrong answers are a
    near miss (`wrong_answer`). Thinking mode puts the first working line in the reasoning; non-thinking
    mode answers directly. Used as the rejected side of delta pairs and as the no-reasoning model of
    the Qwen3 query filter (an item it answers right without reasoning is too easy).
    """

    rng_tag = ("weak",)

    def __init__(self, items: Iterable[Mapping[str, Any]], *, skill: float = 0.7, name: str = "weak") -> None:
        if not 0.0 <= skill <= 1.0:
            raise FlowError(f"WeakProceduralTeacher: skill must be in [0, 1], got {skill}")
        super().__init__(items)
        self.skill, self.name = skill, name

    def _one(self, item: Mapping[str, Any], thinking: bool, rng: random.Random) -> Response:
        answer, solution = str(item["answer"]), str(item["solution"])
        right = rng.random() < self.skill ** _steps(solution)
        said = answer if right else wrong_answer(answer, rng)
        first = solution.strip().splitlines()[0]
        reasoning = f"{first}\nThe rest is quick, so the answer should be {said}." if thinking else ""
        return {"reasoning": reasoning, "content": final_line(said, solution), "finish_reason": "stop"}


# --- built-in prompt rows -------------------------------------------------------------------------------

BUILTIN_SEED_OFFSET = 3_000_017
"""Keeps these prompts apart from `sft_examples` (seed + 2,000,003) for the same run seed."""


def builtin_rows(n: int, seed: int = 0, *, tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`n` prompt rows from the training split of the built-in tasks (all of them, or the generators named
    in `tasks`), without near-duplicates of the built-in eval items (`tasks.generate_clean`), with their
    verifier routing (as the built-in eval suite routes them) and worked solutions for the procedural
    teachers."""
    from flowlm.data import tasks as task_gen

    unknown = sorted(set(tasks or ()) - set(task_gen.GENERATORS))
    if unknown:
        raise FlowError(f"builtin tasks: unknown {', '.join(unknown)}; known: {', '.join(task_gen.GENERATORS)}")
    rows = []
    for it in task_gen.generate_clean(seed + BUILTIN_SEED_OFFSET, n, tasks=tuple(tasks) if tasks else None):
        if task_gen.is_heldout(it["prompt"]):  # the split rule is what keeps eval items out of training data
            raise FlowError(f"builtin prompt {it['id']} is on the held-out side of the split")
        verifier = {"word_problem": "gsm8k", "sorting": "sequence"}.get(it["task"], "math")
        rows.append({"id": it["id"], "task": it["task"], "messages": [{"role": "user", "content": it["prompt"]}],
                     "dataset": verifier, "ground_truth": it["answer"], "answer": it["answer"],
                     "solution": it["solution"]})
    return rows


NAMED_TEACHERS = ("procedural", "weak")
"""Teacher specs that answer from the rows' worked solutions (`procedural_problem` says which rows they can)."""


def procedural_problem(row: Mapping[str, Any]) -> str | None:
    """Why the `procedural` / `weak` teachers cannot answer `row` (None: they can): they need a worked
    `solution` string and a final answer (`answer`, else a string or int `ground_truth`)."""
    solution = row.get("solution")
    if not isinstance(solution, str) or not solution.strip():
        return "needs a 'solution' field (the worked solution it answers with)"
    answer = row.get("answer", row.get("ground_truth"))
    if isinstance(answer, bool) or not isinstance(answer, (str, int)):
        return "needs an 'answer' field (or a string 'ground_truth') beside the 'solution'"
    return None


def make_teacher(spec: str, rows: Sequence[Mapping[str, Any]], cfg: TeacherCfg, *, model_teachers: int = 1) -> Teacher:
    """A teacher from a CLI spec: `procedural`, `weak`, or a checkpoint directory. The named teachers refuse
    rows they cannot answer (`procedural_problem`), which would otherwise all be dropped as teacher errors.
    `model_teachers`: how many model teachers the command builds (vLLM engines share the GPU's memory)."""
    if spec in NAMED_TEACHERS and cfg.tools:
        raise FlowError(f"teacher {spec!r}: teacher.tools needs a model teacher (a checkpoint directory)")
    if spec in NAMED_TEACHERS:
        bad = next(((i, p) for i, row in enumerate(rows) if (p := procedural_problem(row))), None)
        if bad is not None:
            raise FlowError(f"teacher {spec!r}: prompt row {bad[0] + 1} {bad[1]}")
    if spec == "procedural":
        return ProceduralTeacher.from_rows(rows, error_rate=cfg.error_rate)
    if spec == "weak":
        return WeakProceduralTeacher.from_rows(rows, skill=cfg.skill)
    path = Path(spec)
    if not path.is_dir():
        raise FlowError(f"{spec}: not a checkpoint directory (teachers are a directory, 'procedural' or 'weak')")
    share = cfg.gpu_memory_utilization or round(0.85 / max(1, model_teachers), 3)
    return ModelTeacher(path, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                        max_slots=cfg.max_slots, tools=cfg.tools, max_tool_calls=cfg.max_tool_calls,
                        tool_workers=cfg.tool_workers, backend=cfg.backend, gpu_memory_utilization=share)
