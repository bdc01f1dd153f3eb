"""Teachers: what samples candidate responses for the post-training data builders.

    teacher.sample(prompts, n, thinking=True, seed=0) -> [[{"reasoning": str, "content": str, ...}] * n] * len(prompts)

A prompt is a list of chat messages ending with the user turn to answer. `thinking=False` is Qwen3's
non-thinking mode: `/no_think` is appended to the last user turn and the reasoning comes back empty.
A response may also carry `finish_reason` (`stop`, `length` = cut off by the token budget, `error`)
and `error` (why nothing was generated); the builders count such candidates by reason, never crash.

- `ModelTeacher`: any local checkpoint directory `flowlm.generate.Engine.from_pretrained` accepts (or
  a model + tokenizer), through the rollout engine; the output is split at `</think>` with the
  verifiers' own think parsing (`flowlm.verify.thinking`).
- `ProceduralTeacher` and `WeakProceduralTeacher` (`flowlm.post.procedural`): the miniature's strong and
  weak models, answering the built-in tasks from their worked solutions.

`make_teacher(spec, rows, cfg)` builds one from a CLI spec.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
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


def make_teacher(spec: str, rows: Sequence[Mapping[str, Any]], cfg: TeacherCfg, *, model_teachers: int = 1) -> Teacher:
    """A teacher from a CLI spec: `procedural`, `weak`, or a checkpoint directory. The named teachers refuse
    rows they cannot answer (`procedural_problem`), which would otherwise all be dropped as teacher errors.
    `model_teachers`: how many model teachers the command builds (vLLM engines share the GPU's memory)."""
    from flowlm.post.procedural import NAMED_TEACHERS, ProceduralTeacher, WeakProceduralTeacher, procedural_problem

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
