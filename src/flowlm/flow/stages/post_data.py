"""Stage kinds `coldstart`, `pairs`, `multiturn` and `simfc`: post-training data built inside a flow (`flowlm.post`).

    sft_data:
      kind: coldstart                 # rejection sampling + Qwen3 filters -> SFT chat rows
      prompts: builtin                # or a JSONL of prompt rows (messages / prompt + verifier routing)
      n_prompts: 4000
      teacher: procedural             # procedural | weak | an earlier stage (its model) | a checkpoint
      config: {n: 1, no_think_fraction: 0.2}          # ColdStartCfg fields
    dpo_pairs:
      kind: pairs                     # delta learning: strong chosen vs weak rejected
      strong: procedural
      weak: sft                       # the SFT stage's own model: its mistakes are the rejected side
      config: {thinking: true}        # PairCfg fields
    mt_prompts:
      kind: multiturn                 # multi-turn prompts for last-turn pairs (self-talk / synthetic context)
      prompts: builtin
      teacher: sft                    # answers self-talk's turns
      simulator: /ckpt/instruct       # plays the user
      config: {method: self_talk, turns: 3}   # MultiTurnCfg fields
    (then a pairs stage with `prompts: mt_prompts`: the prompts of coldstart and pairs may name a data stage)
    fc_data:
      kind: simfc                     # function-calling conversations, user and tools simulated by a model
      toolsets: data/toolsets.jsonl   # rows with `tools`; or tools: [calculator, "mcp:python server.py"]
      teacher: /ckpt/instruct         # an earlier stage (its model) or a checkpoint; simulator: likewise
      config: {per_toolset: 10}       # SimFCCfg fields

Each writes the rows (`rows.jsonl`) and the accounting (`accounting.json`: every prompt, candidate or
conversation kept or dropped by reason, conservation checked) and tokenizes the rows with the run's tokenizer,
so a train stage names the stage as its data (`data: sft_data`). `coldstart` and `simfc` output a token store
(`store`, assistant masks); `multiturn` outputs prompt rows only (`rows`, no token store); `pairs` outputs aligned chosen / rejected stores (`pairs`, what `dpo` and
`reward_model` train on) and a token store of the chosen answers alone (`store`, for the seed's
"SFT on the chosen side" control).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from flowlm.atomic import atomic_write_json, write_jsonl
from flowlm.config import Strict
from flowlm.errors import FlowError
from flowlm.flow.stages.registry import StageContext, StageKind, StageResult, register
from flowlm.post.coldstart import ColdStartCfg
from flowlm.post.delta import PairCfg
from flowlm.post.multiturn import MultiTurnCfg
from flowlm.post.simfc import SimFCCfg
from flowlm.post.teachers import TeacherCfg
from flowlm.tools.builtin import ToolNames

NAMED_TEACHERS = ("procedural", "weak")


class _BuilderConfig(Strict):
    prompts: str = Field("builtin", description="'builtin' (training-split task prompts), a JSONL path, an "
                                                "earlier data stage (its rows: a multiturn stage's prompts), or "
                                                "NAME=PATH (a benchmark-format file)")
    n_prompts: int = Field(1000, gt=0, description="builtin: how many prompts; a file: at most this many rows")
    seed: int = Field(0, description="builtin prompt seed")
    teacher_settings: TeacherCfg = Field(default_factory=TeacherCfg, description="sampling of model teachers")
    bench: list[str] = Field(default_factory=list, description="benchmark files to decontaminate against")
    instruction: str = Field("Put your final answer within \\boxed{}.",
                             description="a format instruction appended to a share of the user turns")
    instruction_fraction: float = Field(0.0, ge=0, le=1, description="share of prompts that get `instruction`")


class ColdStartStageConfig(_BuilderConfig):
    """Rejection-sampled SFT rows (Qwen3 cold start / mode fusion)."""

    kind: Literal["coldstart"] = "coldstart"
    teacher: str = "procedural"
    query_teacher: str | None = Field(None, description="answers without reasoning; prompts it solves are dropped")
    config: ColdStartCfg = Field(default_factory=ColdStartCfg)


class PairsStageConfig(_BuilderConfig):
    """Delta-learning preference pairs (strong chosen, weak rejected)."""

    kind: Literal["pairs"] = "pairs"
    strong: str = "procedural"
    weak: str = "weak"
    config: PairCfg = Field(default_factory=PairCfg)


class MultiTurnStageConfig(_BuilderConfig):
    """Multi-turn prompts (self-talk or synthetic context) for a later stage's last-turn pairs."""

    kind: Literal["multiturn"] = "multiturn"
    teacher: str | None = Field(None, description="answers self-talk's turns: procedural, a stage or a checkpoint")
    simulator: str = Field(description="plays the user: an earlier stage (its model) or a checkpoint directory")
    config: MultiTurnCfg = Field(default_factory=MultiTurnCfg)

    @model_validator(mode="after")
    def _needs(self) -> MultiTurnStageConfig:
        if self.config.method == "self_talk" and self.teacher is None:
            raise ValueError("self_talk needs a teacher (it answers each turn)")
        if self.simulator in NAMED_TEACHERS:
            raise ValueError(f"simulator {self.simulator!r}: a model plays the user (an earlier stage or a checkpoint)")
        return self


class SimFCStageConfig(Strict):
    """Simulated function-calling conversations (OLMo 3's SimFC) as SFT rows."""

    kind: Literal["simfc"] = "simfc"
    toolsets: str | None = Field(None, description="JSONL of tool set rows (`tools`: function definitions)")
    tools: ToolNames = Field(default_factory=list, description="or tool sets of built-in tools / mcp:SERVER, one each")
    teacher: str = Field(description="the assistant: an earlier stage (its model) or a checkpoint directory")
    simulator: str | None = Field(None, description="plays the user and the functions (default: the teacher)")
    teacher_settings: TeacherCfg = Field(default_factory=TeacherCfg, description="sampling of both models")
    bench: list[str] = Field(default_factory=list,
                             description="benchmark files to decontaminate the user turns against")
    config: SimFCCfg = Field(default_factory=SimFCCfg)

    @model_validator(mode="after")
    def _one_source(self) -> SimFCStageConfig:
        if (self.toolsets is None) == (not self.tools):
            raise ValueError("give toolsets (a JSONL file) or tools (built-in / mcp:SERVER), one of them")
        if self.teacher_settings.tools:
            raise ValueError("teacher_settings.tools: the simulator answers the calls in simfc")
        return self


def _teacher_refs(ctx: StageContext, specs: list[str | None]) -> list[str]:
    return [s for s in specs if s is not None and s not in NAMED_TEACHERS]


def _specs(cfg: Any) -> list[str | None]:
    """The teachers a data stage names (a named teacher, an earlier stage, a checkpoint, or None)."""
    if isinstance(cfg, (SimFCStageConfig, MultiTurnStageConfig)):
        return [cfg.teacher, cfg.simulator]
    return [cfg.teacher, cfg.query_teacher] if isinstance(cfg, ColdStartStageConfig) else [cfg.strong, cfg.weak]


def _inputs(ctx: StageContext, name: str, cfg: Any) -> list[str]:
    if isinstance(cfg, SimFCStageConfig):
        files = [cfg.toolsets] if cfg.toolsets else []
    else:  # a data stage (fingerprinted by its outputs), a file, or a benchmark's file
        from flowlm.rl.prompts import spec_file

        files = [spec_file(cfg.prompts)] if cfg.prompts != "builtin" else []
    tokenizer = [] if isinstance(cfg, MultiTurnStageConfig) else [ctx.latest("tokenizer", name)]  # (no tokens)
    return [*tokenizer, *_teacher_refs(ctx, _specs(cfg)), *files, *cfg.bench]


def _prompt_rows(ctx: StageContext, name: str, cfg: _BuilderConfig) -> list[dict[str, Any]]:
    """The stage's prompt rows (at most `n_prompts`), each checked: built-in ones, a JSONL file (a bad line is
    named FILE:LINE), an earlier data stage's rows (a `multiturn` stage's, or any other's), or `NAME=PATH`, a
    benchmark-format file (`flowlm.flow.stages.common.prompt_rows`)."""
    from flowlm.flow.stages.common import prompt_rows
    from flowlm.jsonlines import iter_json_objects
    from flowlm.post.cli import check_prompt_row
    from flowlm.rl.prompts import benchmark_spec

    if cfg.prompts == "builtin" or cfg.prompts in ctx.recipe.stages or benchmark_spec(cfg.prompts) is not None:
        loaded = prompt_rows(ctx, name, cfg.prompts, n_builtin=cfg.n_prompts, seed=cfg.seed)
        rows = [check_prompt_row(f"{cfg.prompts}: row {i + 1}", row) for i, row in enumerate(loaded[:cfg.n_prompts])]
    else:
        rows = []
        for line, row in iter_json_objects(cfg.prompts):
            rows.append(check_prompt_row(f"{cfg.prompts}:{line}", row))
            if len(rows) == cfg.n_prompts:
                break
    if not rows:
        raise FlowError(f"stage '{name}': {cfg.prompts}: no prompt rows")
    return with_instruction(rows, cfg)


def with_instruction(rows: list[dict[str, Any]], cfg: _BuilderConfig) -> list[dict[str, Any]]:
    """Append `cfg.instruction` to the last user turn of a deterministic `instruction_fraction` of the rows
    (chosen by a hash of the turn's text, before any `/think` / `/no_think` switch at its end)."""
    import hashlib

    if not cfg.instruction_fraction:
        return rows
    out = []
    for row in rows:
        msgs = row.get("messages")
        last = max((i for i, m in enumerate(msgs or []) if m.get("role") == "user"), default=None)
        text = msgs[last].get("content") if last is not None else None
        if not isinstance(text, str):
            out.append(row)
            continue
        draw = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        if draw < cfg.instruction_fraction:
            body, flag = text, ""
            for switch in (" /no_think", " /think"):
                if text.endswith(switch):
                    body, flag = text[: -len(switch)], switch
            msgs = [*msgs[:last], {**msgs[last], "content": f"{body}\n\n{cfg.instruction}{flag}"}, *msgs[last + 1:]]
            row = {**row, "messages": msgs}
        out.append(row)
    return out


def _teacher(ctx: StageContext, spec: str, rows: list[dict[str, Any]], cfg: _BuilderConfig | SimFCStageConfig) -> Any:
    """The teacher `spec` names; vLLM teachers split the GPU among the stage's model teachers."""
    from flowlm.post.teachers import make_teacher

    if spec not in NAMED_TEACHERS and spec in ctx.recipe.stages:
        spec = str(ctx.model_dir(spec))
    models = sum(1 for s in _specs(cfg) if s is not None and s not in NAMED_TEACHERS)
    return make_teacher(spec, rows, cfg.teacher_settings, model_teachers=models)


def _write(ctx: StageContext, name: str, rows: list[dict[str, Any]], acc: Any) -> tuple[Path, dict[str, Any]]:
    out = ctx.path(name)
    out.mkdir(parents=True, exist_ok=True)
    acc.check()
    write_jsonl(out / "rows.jsonl", rows)
    atomic_write_json(out / "accounting.json", acc.to_dict())
    if not rows:
        raise FlowError(f"stage '{name}': every prompt was dropped ({acc.table()}); nothing to train on")
    return out, {"rows": len(rows), "accounting": acc.to_dict()}


def _tokenizer(ctx: StageContext, name: str) -> Any:
    from flowlm.model.tokenizer import load_tokenizer

    return load_tokenizer(ctx.path(ctx.outputs[ctx.latest("tokenizer", name)]["tokenizer"]))


def run_coldstart(ctx: StageContext, name: str, cfg: ColdStartStageConfig) -> StageResult:
    """Sample, filter and keep SFT rows; tokenize them with assistant masks."""
    from flowlm.data.store import tokenize_to_store
    from flowlm.post.cli import load_decontam
    from flowlm.post.coldstart import build_coldstart

    rows = _prompt_rows(ctx, name, cfg)
    query = _teacher(ctx, cfg.query_teacher, rows, cfg) if cfg.query_teacher else None
    kept, acc = build_coldstart(rows, _teacher(ctx, cfg.teacher, rows, cfg), cfg.config,
                                decontam=load_decontam(cfg.bench), query_teacher=query)
    out, metrics = _write(ctx, name, kept, acc)
    store = tokenize_to_store(_tokenizer(ctx, name), kept, out / "store")
    metrics["tokens"] = int(store.n_tokens)
    return {"rows": f"{name}/rows.jsonl", "accounting": f"{name}/accounting.json", "store": f"{name}/store"}, metrics


def run_pairs(ctx: StageContext, name: str, cfg: PairsStageConfig) -> StageResult:
    """Build delta pairs; tokenize them as pairs and their chosen side as SFT rows."""
    from flowlm.data.pairs import tokenize_pairs
    from flowlm.data.store import tokenize_to_store
    from flowlm.post.cli import load_decontam
    from flowlm.post.delta import build_delta_pairs

    rows = _prompt_rows(ctx, name, cfg)
    strong, weak = _teacher(ctx, cfg.strong, rows, cfg), _teacher(ctx, cfg.weak, rows, cfg)
    pairs, acc = build_delta_pairs(rows, strong, weak, cfg.config, decontam=load_decontam(cfg.bench))
    out, metrics = _write(ctx, name, pairs, acc)
    tok = _tokenizer(ctx, name)
    stores = tokenize_pairs(tok, pairs, out / "pairs", source=f"{name}/rows.jsonl")
    chosen = [{"id": p.get("id"), "messages": [*p["prompt"], *p["chosen"]]} for p in pairs]
    tokenize_to_store(tok, chosen, out / "chosen")
    metrics["tokens"] = int(sum(st.n_tokens for st in stores.values()))
    return {"rows": f"{name}/rows.jsonl", "accounting": f"{name}/accounting.json", "pairs": f"{name}/pairs",
            "store": f"{name}/chosen"}, metrics


def run_multiturn(ctx: StageContext, name: str, cfg: MultiTurnStageConfig) -> StageResult:
    """Grow the prompts into multi-turn ones; the rows are prompts for a later coldstart or pairs stage."""
    from flowlm.post.cli import load_decontam
    from flowlm.post.multiturn import build_multiturn

    rows = _prompt_rows(ctx, name, cfg)
    teacher = _teacher(ctx, cfg.teacher, rows, cfg) if cfg.teacher else None
    grown, acc = build_multiturn(rows, teacher, _teacher(ctx, cfg.simulator, rows, cfg), cfg.config,
                                 decontam=load_decontam(cfg.bench))
    _, metrics = _write(ctx, name, grown, acc)
    return {"rows": f"{name}/rows.jsonl", "accounting": f"{name}/accounting.json"}, metrics


def run_simfc(ctx: StageContext, name: str, cfg: SimFCStageConfig) -> StageResult:
    """Simulate conversations over the tool sets; tokenize the kept ones with assistant masks."""
    from flowlm.data.store import tokenize_to_store
    from flowlm.jsonlines import iter_json_objects
    from flowlm.post.cli import load_decontam
    from flowlm.post.simfc import build_simfc, tool_toolsets, toolset_rows

    for role, spec in (("teacher", cfg.teacher), ("simulator", cfg.simulator)):
        if spec in NAMED_TEACHERS:
            raise FlowError(f"stage '{name}': {role} {spec!r}: simfc needs a model (an earlier stage or a checkpoint)")
    toolsets = tool_toolsets(cfg.tools) if cfg.tools else toolset_rows(
        (f"{cfg.toolsets}:{line}", row) for line, row in iter_json_objects(cfg.toolsets))
    if not toolsets:
        raise FlowError(f"{cfg.toolsets}: no tool set rows")
    simulator = _teacher(ctx, cfg.simulator, [], cfg) if cfg.simulator else None
    rows, acc = build_simfc(toolsets, _teacher(ctx, cfg.teacher, [], cfg), simulator, cfg.config,
                            decontam=load_decontam(cfg.bench))
    out, metrics = _write(ctx, name, rows, acc)
    store = tokenize_to_store(_tokenizer(ctx, name), rows, out / "store")
    metrics["tokens"] = int(store.n_tokens)
    return {"rows": f"{name}/rows.jsonl", "accounting": f"{name}/accounting.json", "store": f"{name}/store"}, metrics


register(StageKind(name="coldstart", config=ColdStartStageConfig, run=run_coldstart, inputs=_inputs,
                   main_rank_only=True, makes_data=True))
register(StageKind(name="pairs", config=PairsStageConfig, run=run_pairs, inputs=_inputs,
                   main_rank_only=True, makes_data=True))
register(StageKind(name="simfc", config=SimFCStageConfig, run=run_simfc, inputs=_inputs,
                   main_rank_only=True, makes_data=True))
register(StageKind(name="multiturn", config=MultiTurnStageConfig, run=run_multiturn, inputs=_inputs,
                   main_rank_only=True))
