"""Stage kind `train`: one run of the training engine with the objective the stage names.

Pretrain, midtrain and long-context are `train` stages with the `lm` objective; post-training
objectives plug in through `objective: {name: ..., ...}`. A stage starts from scratch (the recipe's
model preset), from an earlier stage's model, or from any local causal-LM checkpoint the adapter loads;
it resumes from its own last checkpoint after a crash, and evaluates BPB before, during (`eval_every`)
and after training.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import Field, SerializeAsAny, field_validator

from flowlm.config import Strict
from flowlm.errors import FlowError
from flowlm.flow.stages.common import bpb_eval_fn, export_model, hf_config_writer
from flowlm.flow.stages.registry import StageContext, StageKind, StageResult, register
from flowlm.train.config import EngineConfig
from flowlm.train.objectives import ObjectiveConfig, parse_objective_config


class YarnStageConfig(Strict):
    """YaRN rope scaling switched on for a stage (applied to full-attention layers only)."""

    factor: float = Field(gt=1)
    original_max_seq_len: int = Field(gt=0)
    beta_fast: float = 32.0
    beta_slow: float = 1.0


class GenerationEvalConfig(Strict):
    """Generation-based eval inside a train stage (greedy by default), beside BPB, at every eval point."""

    suites: list[str] = Field(min_length=1, description="suite specs as `flowlm eval --suite` takes them")
    max_items: int = Field(50, gt=0, description="items per suite")
    max_new_tokens: int | None = Field(None, gt=0, description="default: the suite's own limit")
    temperature: float = Field(0.0, ge=0, description="0 = greedy (in-loop curves without sampling noise)")
    thinking: bool = True


class TrainStageConfig(EngineConfig):
    """The engine's loop settings plus what this stage trains: objective, data, starting point."""

    kind: Literal["train"] = "train"
    objective: SerializeAsAny[ObjectiveConfig] = Field(
        default_factory=lambda: parse_objective_config("lm"),
        description="objective name and its own settings, e.g. {name: lm, z_loss: 1.0e-5}")
    init: str = Field("scratch", description="'scratch', an earlier stage's name, or a checkpoint path")
    data: str = Field(description="corpus name made by the tokenizer stage, or a token-store path")
    yarn: YarnStageConfig | None = None
    sliding_window: int | None = Field(None, gt=0)
    generation_eval: GenerationEvalConfig | None = Field(
        None, description="also score generated answers on these suites at every eval point (single process)")

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, value: Any) -> Any:
        from pydantic import ValidationError

        from flowlm.config import format_error

        try:
            return parse_objective_config(value)
        except ValidationError as exc:  # one line naming the key inside the objective's own config
            err = exc.errors()[0]
            raise ValueError(format_error(exc_model(value), err, "objective")) from None


def exc_model(value: Any) -> type:
    """The config class a raw `objective:` value names (for error messages)."""
    from flowlm.train.objectives import objective_class

    name = value if isinstance(value, str) else value.get("name", "") if isinstance(value, dict) else ""
    return objective_class(str(name)).Config


def _inputs(ctx: StageContext, name: str, cfg: TrainStageConfig) -> list[str]:
    refs = [ctx.latest("tokenizer", name), ctx.latest("corpus", name)]
    if cfg.init != "scratch":
        refs.append(cfg.init)
    if "/" in cfg.data:
        refs.append(cfg.data)
    return refs


def run(ctx: StageContext, name: str, cfg: TrainStageConfig) -> StageResult:
    """Train, export the final checkpoint as `<name>/model`, and report the summary and BPB evals."""
    from flowlm.data.loader import PackedLoader
    from flowlm.data.pack import PackedDataset
    from flowlm.data.store import TokenStore
    from flowlm.model.tokenizer import load_tokenizer, tokenizer_hash
    from flowlm.train.engine import EvalCallback, Trainer
    from flowlm.train.objectives import build_objective
    from flowlm.train.parallel import barrier, parallelize

    tok_stage = ctx.outputs[ctx.latest("tokenizer", name)]
    tok_dir = ctx.path(tok_stage["tokenizer"])
    tok = load_tokenizer(tok_dir)
    model, write_config = build_model(ctx, cfg, tok)
    store_path = ctx.path(tok_stage[f"store:{cfg.data}"]) if f"store:{cfg.data}" in tok_stage else Path(cfg.data)
    if not store_path.exists():
        known = sorted(k.removeprefix("store:") for k in tok_stage if k.startswith("store:"))
        raise FlowError(f"stage '{name}': data '{cfg.data}' is neither a corpus of the tokenizer stage {known} nor a path")
    store = TokenStore.open(store_path, expect_vocab_size=len(tok), expect_tokenizer_hash=tokenizer_hash(tok_dir))
    loader = PackedLoader(PackedDataset(store, cfg.seq_len, seed=cfg.seed), cfg.batch_size, seed=cfg.seed)
    if ctx.world.distributed:
        loader = loader.shard(ctx.world.rank, ctx.world.size)
    flops = model.flops_per_token(cfg.seq_len) if hasattr(model, "flops_per_token") else None
    model = parallelize(model.to(ctx.world.device), ctx.world, compile=cfg.compile, bf16=cfg.precision == "bf16")
    evaluator = EvalCallback(eval_fn(ctx, name, cfg, tok), every=cfg.eval_every)
    out = ctx.path(name)
    trainer = Trainer(model, build_objective(cfg.objective), loader, cfg, out, world=ctx.world, callbacks=[evaluator],
                      write_config=write_config, flops_per_token=flops, show_progress=ctx.show_progress,
                      description=name)
    trainer.resume()  # the record notes resumed attempts (FlowRecord.begin)
    summary = trainer.fit()
    final = trainer.ckpt_root / f"step_{cfg.steps:07d}"
    if ctx.world.is_main:
        export_model(final, out / "model")
    barrier(ctx.world)
    metrics = {k: v for k, v in summary.items() if k != "eval"}
    metrics["eval"] = summary.get("eval", {})
    first = evaluator.history[0] if evaluator.history and evaluator.history[0]["step"] == 0 else None
    if first is not None:
        metrics["eval_init"] = {k[5:]: v for k, v in first.items() if k.startswith("eval/")}
    checkpoints = sorted(p.name for p in trainer.ckpt_root.glob("step_*"))
    model_config = getattr(model, "cfg", None)
    return {"model": f"{name}/model", "checkpoints": f"{name}/checkpoints", "metrics": f"{name}/metrics.jsonl"}, {
        **metrics,
        "checkpoints_kept": checkpoints,
        "model_config": model_config.to_dict() if hasattr(model_config, "to_dict") else None,
    }


def eval_fn(ctx: StageContext, name: str, cfg: TrainStageConfig, tok: Any) -> Callable[[torch.nn.Module], dict[str, float]]:
    """BPB with the run's settings, plus generation suites when `generation_eval` is set."""
    bpb = bpb_eval_fn(ctx, name, tok)
    gen_cfg = cfg.generation_eval
    if gen_cfg is None:
        return bpb
    if ctx.world.distributed:
        raise FlowError(f"stage '{name}': generation_eval runs in a single process; evaluate a sharded run "
                        "with an `eval` stage after it")
    from flowlm.eval.evaluate import load_suites, make_generation_eval_fn, parse_suite_specs
    from flowlm.eval.harness import SamplingSettings
    from flowlm.eval.prompting import PromptFormat

    suites = load_suites(parse_suite_specs(gen_cfg.suites), max_items=gen_cfg.max_items)
    generate = make_generation_eval_fn(tok, suites, fmt=PromptFormat(thinking=gen_cfg.thinking),
                                       sampling=SamplingSettings(temperature=gen_cfg.temperature,
                                                                 max_new_tokens=gen_cfg.max_new_tokens))
    return lambda model: {**bpb(model), **generate(model)}


def build_model(ctx: StageContext, cfg: TrainStageConfig, tok: Any) -> tuple[torch.nn.Module, Callable[[Path], None]]:
    """The model to train and the writer of its checkpoints' config files.

    Scratch: the recipe's preset (seeded). Otherwise the weights of `cfg.init`: OLMo-3 checkpoints load as
    the native model (with the stage's YaRN / window changes), any other causal LM through the adapter.
    """
    from flowlm.model.adapter import load_causal_lm
    from flowlm.model.config import ModelConfig, YarnConfig
    from flowlm.model.hf import load_native
    from flowlm.model.olmo3 import Olmo3

    if cfg.init == "scratch":
        section = ctx.recipe.model
        try:
            model_cfg = ModelConfig.preset(section.preset, **{"vocab_size": len(tok), **section.overrides})
        except TypeError as exc:
            raise FlowError(f"recipe model.overrides: {exc}") from None
        torch.manual_seed(cfg.seed)
        model = Olmo3(model_cfg)
    else:
        src = ctx.model_dir(cfg.init)
        if not is_olmo3_checkpoint(src):
            if cfg.yarn is not None or cfg.sliding_window is not None:
                raise FlowError(f"stage init {src}: yarn / sliding_window apply to OLMo-3 checkpoints only")
            model = load_causal_lm(src)
            vocab = model.hf.get_input_embeddings().weight.shape[0]
            if len(tok) > vocab:
                raise FlowError(f"stage init {src}: its vocabulary ({vocab}) is smaller than the run's tokenizer "
                                f"({len(tok)}); use the checkpoint's tokenizer (tokenizer stage `path:`)")
            return model, _adapter_config_writer(model, tok)
        model, model_cfg = load_native(src)
    changes: dict[str, Any] = {}
    if cfg.yarn is not None:
        changes["yarn"] = YarnConfig(factor=cfg.yarn.factor, beta_fast=cfg.yarn.beta_fast, beta_slow=cfg.yarn.beta_slow,
                                     original_max_seq_len=cfg.yarn.original_max_seq_len)
    if cfg.sliding_window is not None:
        changes["sliding_window"] = cfg.sliding_window
    if cfg.seq_len > model_cfg.max_seq_len:
        changes["max_seq_len"] = cfg.seq_len
    if changes:
        model_cfg = dataclasses.replace(model_cfg, **changes)
        state = model.state_dict()
        model = Olmo3(model_cfg)
        model.load_state_dict(state)
    return model, hf_config_writer(model_cfg, tok)


def _adapter_config_writer(model: Any, tok: Any) -> Callable[[Path], None]:
    """Config files of an adapted HF model's checkpoints: its own config, the run's tokenizer, flowlm.json."""
    from flowlm.atomic import atomic_write_json
    from flowlm.model.hf import checkpoint_meta

    def write(d: Path) -> None:
        model.hf.config.save_pretrained(str(d))
        atomic_write_json(d / "flowlm.json", checkpoint_meta(None))
        tok.save_pretrained(str(d))

    return write


def is_olmo3_checkpoint(path: Path) -> bool:
    """True for flowlm OLMo-3 checkpoints and HF checkpoints whose config says `olmo3`."""
    try:
        if json.loads((path / "config.json").read_text()).get("model_type") == "olmo3":
            return True
    except (OSError, json.JSONDecodeError):
        pass
    try:
        return json.loads((path / "flowlm.json").read_text()).get("model_config") is not None
    except (OSError, json.JSONDecodeError):
        return False


register(StageKind(name="train", config=TrainStageConfig, run=run, inputs=_inputs, uses_model_section=True,
                   default_for=("pretrain", "midtrain", "long_context")))
