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
import math
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import Field, SerializeAsAny, field_validator, model_validator

from flowlm.config import Strict
from flowlm.errors import ConfigError, FlowError
from flowlm.flow.stages.common import bpb_eval_fn, export_model, hf_config_writer
from flowlm.flow.stages.registry import StageContext, StageKind, StageResult, register
from flowlm.tools.builtin import ToolNames
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

    @model_validator(mode="after")
    def _samples_need_sampling(self) -> GenerationEvalConfig:
        if self.n > 1 and self.temperature == 0:
            raise ValueError(f"n = {self.n} greedy samples would all be the same; set temperature > 0")
        return self

    suites: list[str] = Field(min_length=1, description="suite specs as `flowlm eval --suite` takes them")
    max_items: int = Field(50, gt=0, description="items per suite")
    max_new_tokens: int | None = Field(None, gt=0, description="default: the suite's own limit")
    temperature: float = Field(0.0, ge=0, description="0 = greedy (in-loop curves without sampling noise)")
    n: int = Field(1, ge=1, description="samples per item (temperature > 0): pass@1 is their mean, pass@n added")
    top_p: float = Field(0.95, gt=0, le=1, description="with temperature > 0 (flowlm eval's default)")
    seed: int = Field(0, description="sampling seed: the same samples at every eval point for the same weights")
    by_category: bool = Field(False, description="also '<suite>/<category>/pass@1' per task / instruction / subject")
    thinking: bool = True
    format: Literal["chat", "plain"] = Field(
        "chat", description="the chat template, or the suite's plain template (base models, RL-Zero)")


class EarlyStopConfig(Strict):
    """Stop when an eval result has not improved for `patience` evaluations (every `eval_every` steps)."""

    metric: str = Field(description="an eval result key, e.g. 'builtin/pass@1' or 'gsm8k_bpb'")
    mode: Literal["max", "min"] = "max"
    patience: int = Field(2, gt=0)
    min_delta: float = Field(0.0, ge=0)


class OnPolicyConfig(Strict):
    """The student samples its own completions each step (on-policy distillation; `flowlm.train.onpolicy`).

    `data` then names prompts: 'builtin' (training-split task prompts), a data stage (its rows' prompts),
    or a JSONL of prompt rows."""

    max_new_tokens: int = Field(256, gt=0, description="per completion, tool turns included")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    n_prompts: int = Field(2000, gt=0, description="data: builtin: how many prompts")
    tools: ToolNames = Field(default_factory=list, description="tools the student may call while it samples "
                             "(built-in names or mcp:SERVER; their answers are context, not targets)")
    max_tool_calls: int = Field(5, ge=1, description="with tools: calls (and tool turns) per completion at most")
    tool_workers: int = Field(0, ge=0, description="with tools: threads that run calls beside decoding (0: inline, "
                                                   "so a resumed run regenerates the same tokens)")

    @model_validator(mode="after")
    def _check(self) -> "OnPolicyConfig":
        tool_only = sorted(f for f in ("max_tool_calls", "tool_workers") if f in self.model_fields_set)
        if not self.tools and tool_only:
            raise ValueError(f"{', '.join(tool_only)} only applies with tools")
        return self


class TrainStageConfig(EngineConfig):
    """The engine's loop settings plus what this stage trains: objective, data, starting point.

    Length: `steps`, or `epochs` over the data (the steps that many passes take, rounded up); with
    neither, the objective's default epochs (sft 2, dpo 1, reward_model 1, distill 2; `lm` needs one).
    """

    kind: Literal["train"] = "train"
    steps: int | None = Field(None, gt=0, description="optimizer steps (or set epochs)")  # type: ignore[assignment]
    epochs: float | None = Field(None, gt=0, description="passes over the data instead of steps")
    early_stop: EarlyStopConfig | None = Field(None, description="needs eval_every > 0")
    on_policy: OnPolicyConfig | None = Field(None, description="distill only: sample the student each step")
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

    @model_validator(mode="after")
    def _length(self) -> "TrainStageConfig":
        from flowlm.train.objectives import objective_class

        if self.steps is not None and self.epochs is not None:
            raise ValueError("set steps or epochs, not both")
        if self.steps is None and self.epochs is None and objective_class(self.objective.name).default_epochs is None:
            raise ValueError(f"objective '{self.objective.name}' has no default length: set steps or epochs")
        if self.early_stop is not None and not self.eval_every:
            raise ValueError("early_stop needs eval_every > 0 (it compares evaluations)")
        if self.kind == "train" and objective_class(self.objective.name).data_kind not in ("tokens", "pairs"):
            raise ValueError(f"objective '{self.objective.name}' trains on {objective_class(self.objective.name).data_kind}, "
                             "which a train stage does not make (kind: rl makes rollouts)")
        if self.on_policy is not None and self.objective.name != "distill":
            raise ValueError(f"on_policy applies to the distill objective, not '{self.objective.name}'")
        return self

    def engine_config(self, batches_per_epoch: int) -> "TrainStageConfig":
        """This config with `steps` fixed: given, or epochs x batches per epoch (rounded up)."""
        if self.steps is not None:
            return self
        from flowlm.train.objectives import objective_class

        epochs = self.epochs if self.epochs is not None else objective_class(self.objective.name).default_epochs
        return self.model_copy(update={"steps": max(1, math.ceil(float(epochs) * batches_per_epoch))})


def exc_model(value: Any) -> type:
    """The config class a raw `objective:` value names (for error messages)."""
    from flowlm.train.objectives import objective_class

    name = value if isinstance(value, str) else value.get("name", "") if isinstance(value, dict) else ""
    return objective_class(str(name)).Config


MODEL_REFS = ("teacher", "reference")  # objective fields that name a model: an earlier stage or a path


def _inputs(ctx: StageContext, name: str, cfg: TrainStageConfig) -> list[str]:
    refs = [ctx.latest("tokenizer", name), ctx.latest("corpus", name)]
    if cfg.init != "scratch":
        refs.append(cfg.init)
    refs += [ref for f in MODEL_REFS if isinstance(ref := getattr(cfg.objective, f, None), str)]
    if cfg.on_policy is not None and cfg.data == "builtin":
        return refs
    if "/" in cfg.data or data_stage(ctx, cfg.data):
        from flowlm.rl.prompts import spec_file

        refs.append(spec_file(cfg.data))  # a path (a benchmark spec: its file), or a data-building stage's output
    return refs


def resolve_model_refs(ctx: StageContext, objective: Any) -> Any:
    """The objective config with `teacher` / `reference` stage names replaced by their model directories."""
    updates = {f: str(ctx.model_dir(ref)) for f in MODEL_REFS
               if isinstance(ref := getattr(objective, f, None), str) and ref in ctx.recipe.stages}
    return objective.model_copy(update=updates) if updates else objective


def data_stage(ctx: StageContext, data: str) -> bool:
    """Whether `data` names a stage of the recipe whose kind builds training data."""
    from flowlm.flow.stages.registry import get_kind

    stage = ctx.recipe.stages.get(data)
    return stage is not None and get_kind(stage.kind).makes_data


def data_path(ctx: StageContext, name: str, cfg: TrainStageConfig, kind: str) -> Path:
    """Where the stage's data lives: `store:<data>` (`pairs:<data>` for pair objectives) of the tokenizer
    stage, the `store` / `pairs` output of an earlier stage named `data`, or a path."""
    key = "pairs" if kind == "pairs" else "store"
    tok_stage = ctx.outputs[ctx.latest("tokenizer", name)]
    if f"{key}:{cfg.data}" in tok_stage:
        return ctx.path(tok_stage[f"{key}:{cfg.data}"])
    if data_stage(ctx, cfg.data) and cfg.data in ctx.outputs:
        outs = ctx.outputs[cfg.data]
        if key not in outs:
            raise FlowError(f"stage '{name}': stage '{cfg.data}' made no {key} data (it produced {sorted(outs)}); "
                            f"objective '{cfg.objective.name}' trains on {kind}")
        return ctx.path(outs[key])
    path = Path(cfg.data)
    if not path.exists():
        known = sorted(k.split(":", 1)[1] for k in tok_stage if k.startswith(f"{key}:"))
        raise FlowError(f"stage '{name}': data '{cfg.data}' is neither a {key} corpus of the tokenizer stage "
                        f"{known}, nor an earlier stage, nor a path")
    return path


def on_policy_loader(ctx: StageContext, name: str, cfg: TrainStageConfig, tok: Any) -> Any:
    """Prompts for on-policy sampling: built-in task prompts, a data stage's rows, or a JSONL of rows."""
    from flowlm.flow.stages.common import prompt_rows
    from flowlm.post.teachers import prompt_messages
    from flowlm.train.onpolicy import OnPolicyLoader

    op = cfg.on_policy
    assert op is not None
    if ctx.world.distributed:
        raise FlowError(f"stage '{name}': on-policy distillation runs in one process (not under torchrun)")
    rows = prompt_rows(ctx, name, cfg.data, n_builtin=op.n_prompts, seed=cfg.seed)
    # SFT and pair rows: the prompt is what precedes the final answer
    prompts = [[{"role": m["role"], "content": m.get("content") or ""} for m in prompt_messages(row)] for row in rows]
    return OnPolicyLoader(prompts, tok, batch_size=cfg.batch_size, seed=cfg.seed, max_new_tokens=op.max_new_tokens,
                          temperature=op.temperature, top_p=op.top_p, max_len=cfg.seq_len, tools=op.tools,
                          max_tool_calls=op.max_tool_calls, tool_workers=op.tool_workers)


def make_loader(ctx: StageContext, name: str, cfg: TrainStageConfig, tok: Any, kind: str) -> Any:
    """The stage's data source: packed token-store batches, or preference pairs (with their indices)."""
    if cfg.on_policy is not None:
        return on_policy_loader(ctx, name, cfg, tok)
    from flowlm.data.loader import PackedLoader
    from flowlm.data.pack import PackedDataset
    from flowlm.data.pairs import PairDataset
    from flowlm.data.store import TokenStore
    from flowlm.model.tokenizer import tokenizer_hash

    path = data_path(ctx, name, cfg, kind)
    thash = tokenizer_hash(tok)
    if kind == "pairs":
        dataset: Any = PairDataset(path, cfg.seq_len, pad_id=tok.pad_token_id, with_index=True)
        if any(st.tokenizer_hash != thash for st in dataset.stores.values()):
            raise FlowError(f"stage '{name}': {path} was tokenized with another tokenizer than the run's")
    else:  # `open` checks the vocabulary and the tokenizer hash itself
        store = TokenStore.open(path, expect_vocab_size=len(tok), expect_tokenizer_hash=thash)
        dataset = PackedDataset(store, cfg.seq_len, seed=cfg.seed)
    if len(dataset) < cfg.batch_size:  # the loader drops the last partial batch: there would be none
        rows = "pairs" if kind == "pairs" else f"packed rows of {cfg.seq_len} tokens"
        raise ConfigError(f"stage '{name}': {path} holds {len(dataset)} {rows}, fewer than one batch "
                          f"(stages.{name}.batch_size={cfg.batch_size}): lower stages.{name}.batch_size"
                          + ("" if kind == "pairs" else f" or stages.{name}.seq_len") + ", or add data")
    return PackedLoader(dataset, cfg.batch_size, seed=cfg.seed)


def run(ctx: StageContext, name: str, cfg: TrainStageConfig) -> StageResult:
    """Train, export the final checkpoint as `<name>/model`, and report the summary and BPB evals."""
    return train_once(ctx, name, cfg, name)


def train_once(ctx: StageContext, name: str, cfg: TrainStageConfig, out_rel: str, *, loader: Any = None) -> StageResult:
    """One training run of stage `name`'s config writing under `<run dir>/<out_rel>` (a sweep's runs
    share their stage's name for lookups and get their own directories). `loader`: a data source built
    by the caller (another stage kind's, e.g. RL rollouts) instead of the one `data` names; a source
    with `bind(model)` is bound to the placed model before training."""
    from flowlm.model.tokenizer import load_tokenizer
    from flowlm.train.engine import EarlyStopping, EvalCallback, Trainer
    from flowlm.train.objectives import build_objective
    from flowlm.train.parallel import barrier, parallelize

    tok_stage = ctx.outputs[ctx.latest("tokenizer", name)]
    tok = load_tokenizer(ctx.path(tok_stage["tokenizer"]))
    objective = build_objective(resolve_model_refs(ctx, cfg.objective))
    loader = loader if loader is not None else make_loader(ctx, name, cfg, tok, objective.data_kind)
    cfg = cfg if cfg.steps is not None else cfg.engine_config(loader.batches_per_epoch)
    if ctx.world.distributed:
        loader = loader.shard(ctx.world.rank, ctx.world.size)
    model, write_config = build_model(ctx, cfg, tok)
    flops = model.flops_per_token(cfg.seq_len) if hasattr(model, "flops_per_token") else None
    # On-policy loaders sample from the model being trained; one that copies full weights into its own
    # engine (the RL learner under torchrun, `flowlm.rl.ranks`) is bound before FSDP2 shards the model.
    model = model.to(ctx.world.device)
    early = ctx.world.distributed and getattr(loader, "binds_unsharded", False)
    if early:
        loader.bind(model)
    model = parallelize(model, ctx.world, compile=cfg.compile, bf16=cfg.precision == "bf16")
    if hasattr(loader, "bind") and not early:
        loader.bind(model)
    evaluator = EvalCallback(eval_fn(ctx, name, cfg, tok), every=cfg.eval_every)
    callbacks: list[Any] = [evaluator]
    if cfg.early_stop is not None:
        es = cfg.early_stop
        callbacks.append(EarlyStopping(evaluator, es.metric, mode=es.mode, patience=es.patience, min_delta=es.min_delta))
    out = ctx.path(out_rel)
    trainer = Trainer(model, objective, loader, cfg, out, world=ctx.world, callbacks=callbacks,
                      write_config=write_config, flops_per_token=flops, show_progress=ctx.show_progress,
                      description=name)
    trainer.resume()  # the record notes resumed attempts (FlowRecord.begin)
    if hasattr(objective, "precompute_reference"):  # DPO: reference log-probs once, cached on disk
        objective.precompute_reference(loader, out / "reference_cache")
    summary = trainer.fit()
    final = trainer.ckpt_root / f"step_{trainer.step:07d}"
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
    return {"model": f"{out_rel}/model", "checkpoints": f"{out_rel}/checkpoints", "metrics": f"{out_rel}/metrics.jsonl"}, {
        **metrics,
        "planned_steps": cfg.steps,
        "checkpoints_kept": checkpoints,
        "model_config": model_config.to_dict() if hasattr(model_config, "to_dict") else None,
    }


def eval_fn(ctx: StageContext, name: str, cfg: TrainStageConfig, tok: Any) -> Callable[[torch.nn.Module], dict[str, float]]:
    """BPB with the run's settings, plus generation suites when `generation_eval` is set."""
    if cfg.objective.name == "reward_model":  # a sequence classifier: no next-token distribution to score
        return lambda model: {}
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
    fmt = PromptFormat(style=gen_cfg.format, thinking=gen_cfg.thinking)
    sampling = SamplingSettings(n=gen_cfg.n, temperature=gen_cfg.temperature, top_p=gen_cfg.top_p,
                                max_new_tokens=gen_cfg.max_new_tokens, seed=gen_cfg.seed)
    generate = make_generation_eval_fn(tok, suites, fmt=fmt, sampling=sampling, by_category=gen_cfg.by_category)
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

    if cfg.objective.name == "reward_model":
        return build_reward_model(ctx, cfg, tok)
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


def build_reward_model(ctx: StageContext, cfg: TrainStageConfig, tok: Any) -> tuple[torch.nn.Module, Callable[[Path], None]]:
    """A one-label `AutoModelForSequenceClassification` on `cfg.init`'s backbone (the score head seeded
    fresh), padded with the run's pad id: what the `reward_model` verifier loads from the exported dir."""
    from transformers import AutoModelForSequenceClassification

    from flowlm.model.adapter import quiet_hf_loading

    if cfg.init == "scratch":
        raise FlowError("a reward_model stage starts from a trained LM: set init to an earlier stage or a checkpoint")
    if cfg.yarn is not None or cfg.sliding_window is not None:
        raise FlowError("reward_model stages take the checkpoint's own attention settings (no yarn / sliding_window)")
    src = ctx.model_dir(cfg.init)
    torch.manual_seed(cfg.seed)
    try:
        with quiet_hf_loading():
            model = AutoModelForSequenceClassification.from_pretrained(
                str(src), num_labels=1, pad_token_id=tok.pad_token_id, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise FlowError(f"stage init {src}: cannot load as a sequence classifier ({str(exc).splitlines()[0]})") from None
    return model, _hf_model_config_writer(model.config, tok)


def _hf_model_config_writer(config: Any, tok: Any) -> Callable[[Path], None]:
    """Config files of a checkpoint of a plain HF model: its config, the run's tokenizer, flowlm.json."""
    from flowlm.atomic import atomic_write_json
    from flowlm.model.hf import checkpoint_meta

    def write(d: Path) -> None:
        config.save_pretrained(str(d))
        atomic_write_json(d / "flowlm.json", checkpoint_meta(None))
        tok.save_pretrained(str(d))

    return write


def _adapter_config_writer(model: Any, tok: Any) -> Callable[[Path], None]:
    """Config files of an adapted HF model's checkpoints: its own config, the run's tokenizer, flowlm.json."""
    return _hf_model_config_writer(model.hf.config, tok)


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
