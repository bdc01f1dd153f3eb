"""Stage kind `rl`: RLVR, a `train` stage whose batches are verified rollouts of its own policy.

    think_rl:
      kind: rl
      init: dpo                      # an earlier stage or a checkpoint
      prompts: builtin               # builtin | a data stage (its `rows`) | a JSONL of prompt rows | gsm8k=PATH
      n_prompts: 2000                # builtin only
      steps: 200
      seq_len: 2048                  # prompt + completion tokens at most
      rollout: {prompts_per_step: 64, group_size: 8, max_new_tokens: 1024, skip_solved_threshold: 0.875,
                mode: async, async_steps: 8}   # mode sync (the default): generation and learning take turns
      objective: {name: grpo, clip_high: 0.272, is_cap: 2.0}
      optim: {lr: 1.0e-6}
      schedule: {kind: constant, warmup_steps: 0}

Prompt rows hold `messages` (or a `prompt` string) and the verifier routing of `flowlm.verify.rows`
(`dataset` + `ground_truth`, or `verifiers`). The stage builds a `flowlm.rl.source.RolloutSource` and
runs `train_once` with it, so checkpoints, exact resume, BPB and `generation_eval` (in-loop pass@k),
export and the run record are the train stage's. `batch_size` is `prompts_per_step x group_size`
(filled in when left out). Outputs: `model`, `checkpoints`, `metrics` and `rollouts` (per batch, the
prompt ids drawn and trained; `rollouts.jsonl`; mode async adds the ids consumed, dropped as stale and
still pending). Mode async runs the rollout worker as threads of this process (`flowlm.rl.actor`), mode
ray as Ray actors (`flowlm.rl.ray_workers`, several engines, local or multi-node): the learner's
checkpoint holds the prompts in flight, which a resumed run regenerates first. Under torchrun
every rank trains its share of each batch's (or minibatch's) groups, and rank 0 generates with (sync),
hands its rollout thread (async) or pushes to the Ray workers (ray) the full weights gathered from the
shards (`flowlm.rl.ranks`; with minibatches the old-policy pass is collective, each rank on its share).
`tasks` narrows built-in prompts to some task
generators; `prompt_format: plain` renders them in the base-model template for RL-Zero
(`rollout.reward: random` is its spurious-reward control; docs/rl.md). `instructions` appends a
verifiable instruction to a share of the prompts (Instruct RL's IF domain; scored with the task's verifier,
or by `ifeval` alone with `instruction_reward: alone`; `instruction_ids` limits which) and `reward_model` adds a
Bradley–Terry reward model's score to every prompt's rule rewards (Qwen3 general RL); `flowlm.rl.instruct`.
`exclude: [coldstart]` leaves out the prompts an earlier data stage (or a file) already holds: Qwen3 takes
RL queries the cold-start SFT did not use (`flowlm.rl.prompts.exclude_seen`; the number left out is the
`rollouts` metric `excluded_prompts`).
"""

from __future__ import annotations

import sys
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, model_validator

from flowlm.errors import FlowError
from flowlm.flow.stages.registry import StageContext, StageKind, StageResult, register
from flowlm.flow.stages.train import TrainStageConfig
from flowlm.rl.rows import plain_row
from flowlm.rl.source import RolloutConfig
from flowlm.train.objectives import ObjectiveConfig, parse_objective_config

ROLLOUTS = "rollouts"


class RLStageConfig(TrainStageConfig):
    """A train stage's settings (`steps` required) plus where prompts come from and how rollouts are made."""

    kind: Literal["rl"] = "rl"  # type: ignore[assignment]
    data: str = Field(ROLLOUTS, description="fixed: an rl stage trains on its own rollouts (see prompts)")
    prompts: str = Field("builtin", description="'builtin', a data stage (its rows), a JSONL of prompt rows, or "
                         "NAME=PATH: a benchmark-format file (gsm8k=/data/gsm8k/train.jsonl.gz; flowlm rl prompts)")
    n_prompts: int = Field(2000, gt=0, description="prompts: builtin: how many training-split task prompts")
    exclude: list[str] = Field(default_factory=list, description="leave out prompts found in these: data stages "
                               "(their rows, e.g. the cold-start SFT's), JSONL files or NAME=PATH benchmark files")
    tasks: list[str] | None = Field(None, description="prompts: builtin: only these task generators (default all)")
    prompt_format: Literal["chat", "plain"] = Field(
        "chat", description="chat: the chat template (rows' messages); plain: the base-model template "
                            "'Question: ...\\nAnswer:' with a stop at the next question (RL-Zero)")
    instructions: float = Field(
        0.0, ge=0, le=1, description="share of the prompts that get one verifiable IFEval-style instruction, "
                                     "scored by their verifier and ifeval together (Instruct RL; flowlm.rl.instruct)")
    instruction_reward: Literal["with_task", "alone"] = Field(
        "with_task", description="how a prompt with an instruction is scored: by its task's verifier and ifeval "
                                 "together (with_task), or by ifeval alone (alone: the IF domain by itself)")
    instruction_ids: list[str] | None = Field(
        None, min_length=1, description="the instructions drawn from: these IFEval ids only (default all of "
                                        "flowlm.rl.instruct.INSTRUCTIONS, e.g. [change_case:english_lowercase])")
    reward_model: str | None = Field(
        None, description="a reward-model stage (objective reward_model) or checkpoint directory: every prompt is "
                          "also scored by it (Qwen3 general RL: rule rewards plus a model reward without reference)")
    reward_model_weight: float = Field(0.5, gt=0, description="the reward model's weight against a row's rule rewards")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    objective: SerializeAsAny[ObjectiveConfig] = Field(
        default_factory=lambda: parse_objective_config("grpo"),
        description="the policy loss, e.g. {name: grpo, clip_high: 0.28}")

    @model_validator(mode="before")
    @classmethod
    def _plain_stop(cls, data: Any) -> Any:
        """prompt_format: plain stops completions where the template's next question would start (the
        built-in suite's plain stop), unless rollout.stop says otherwise."""
        if isinstance(data, dict) and data.get("prompt_format") == "plain":
            from flowlm.eval.suites import PLAIN_STOP

            raw = data.get("rollout") or {}
            if isinstance(raw, dict) and "stop" not in raw:
                data = {**data, "rollout": {**raw, "stop": list(PLAIN_STOP)}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _fill_batch_size(cls, data: Any) -> Any:
        """`batch_size` defaults to the rows of one step: prompts_per_step x group_size."""
        if isinstance(data, dict) and "batch_size" not in data:
            fields = RolloutConfig.model_fields
            raw = data.get("rollout") or {}
            raw = raw.model_dump() if isinstance(raw, RolloutConfig) else raw
            if isinstance(raw, dict):
                per = raw.get("prompts_per_step", fields["prompts_per_step"].default)
                size = raw.get("group_size", fields["group_size"].default)
                if isinstance(per, int) and isinstance(size, int):
                    data = {**data, "batch_size": per * size}
        return data

    @model_validator(mode="after")
    def _rl(self) -> "RLStageConfig":
        from flowlm.train.objectives import objective_class

        r = self.rollout
        if self.data != ROLLOUTS:
            raise ValueError("an rl stage trains on its rollouts: drop data (prompts come from `prompts`)")
        if self.batch_size != r.prompts_per_step * r.group_size:
            raise ValueError(f"batch_size {self.batch_size} must be rollout.prompts_per_step x group_size = "
                             f"{r.prompts_per_step * r.group_size} (or leave it out)")
        groups = r.prompts_per_step // r.minibatches  # per optimizer step (RolloutConfig checks the division)
        if groups % self.grad_accum:
            raise ValueError(f"grad_accum {self.grad_accum} must divide the groups of one optimizer step, "
                             f"rollout.prompts_per_step / minibatches = {groups} (micro-batches hold whole groups)")
        if self.tasks is not None and self.prompts != "builtin":
            raise ValueError("tasks only apply to prompts: builtin")
        if "builtin" in self.exclude:
            raise ValueError("exclude lists data stages or files whose prompts to leave out, not 'builtin'")
        if self.instruction_reward != "with_task" and self.instructions == 0:
            raise ValueError("instruction_reward applies to prompts with instructions: set instructions > 0")
        if self.instruction_ids is not None:
            from flowlm.rl.instruct import check_instruction_ids

            if self.instructions == 0:
                raise ValueError("instruction_ids apply to prompts with instructions: set instructions > 0")
            try:
                check_instruction_ids(self.instruction_ids)
            except ValueError as exc:
                raise ValueError(f"instruction_ids: {exc}") from None
        if self.prompt_format == "plain" and r.thinking:
            raise ValueError("prompt_format: plain renders no chat template: set rollout.thinking: false")
        if objective_class(self.objective.name).data_kind != ROLLOUTS:
            raise ValueError(f"objective '{self.objective.name}' does not train on rollouts (use grpo)")
        return self


def _inputs(ctx: StageContext, name: str, cfg: RLStageConfig) -> list[str]:
    from flowlm.flow.stages.train import _inputs as train_inputs

    refs = train_inputs(ctx, name, cfg)
    if cfg.prompts != "builtin":  # a data stage (fingerprinted by its outputs), a file or a benchmark's (content)
        from flowlm.rl.prompts import spec_file

        refs.append(spec_file(cfg.prompts))
    if cfg.reward_model is not None:
        refs.append(cfg.reward_model)
    if cfg.exclude:
        from flowlm.rl.prompts import spec_file

        refs += [spec_file(source) for source in cfg.exclude]
    return refs


def prompt_rows(ctx: StageContext, name: str, cfg: RLStageConfig,
                counts: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Built-in training-split task prompts, a data stage's rows, or the rows of a JSONL file, without those
    found in `exclude` (their number goes in `counts["excluded_prompts"]`); then the instructions and the
    reward model the stage adds (`flowlm.rl.instruct`)."""
    from flowlm.flow.stages.common import prompt_rows as read_prompt_rows
    from flowlm.rl.instruct import add_instructions, add_reward_model
    from flowlm.rl.prompts import exclude_seen

    rows = read_prompt_rows(ctx, name, cfg.prompts, n_builtin=cfg.n_prompts, seed=cfg.seed, tasks=cfg.tasks)
    if cfg.exclude:
        seen = [r for source in cfg.exclude for r in read_prompt_rows(ctx, name, source, n_builtin=0, seed=0)]
        rows, excluded = exclude_seen(rows, seen)
        if counts is not None:
            counts["excluded_prompts"] = excluded
        if not rows:
            raise FlowError(f"stage '{name}': every prompt is in exclude ({', '.join(cfg.exclude)})")
    if cfg.instructions > 0:  # to the last user turn, before a plain rendering puts it in the template
        try:
            rows = add_instructions(rows, cfg.instructions, cfg.seed, alone=cfg.instruction_reward == "alone",
                                    only=cfg.instruction_ids)
        except ValueError as exc:  # a row without a user turn (a plain `prompt` string)
            raise FlowError(f"stage '{name}': instructions: {exc}") from None
    if cfg.reward_model is not None:
        path = ctx.model_dir(cfg.reward_model)
        if not (path / "config.json").is_file():
            raise FlowError(f"stage '{name}': reward_model '{cfg.reward_model}' is not a checkpoint directory ({path})")
        rows = add_reward_model(rows, str(path), cfg.reward_model_weight)
    return [plain_row(r) for r in rows] if cfg.prompt_format == "plain" else rows


def old_logps_fn(cfg: RLStageConfig) -> Any:
    """The old-policy pass (`minibatches` or `num_epochs` > 1) with the learner's LM-head precision, autocast
    and prefix sharing, so the first step of a rollout batch has ratio 1 exactly
    (`flowlm.rl.old_policy.old_policy_logps`)."""
    from functools import partial

    from flowlm.rl.old_policy import old_policy_logps

    return partial(old_policy_logps, fp32_lm_head=bool(getattr(cfg.objective, "fp32_lm_head", False)),
                   bf16=cfg.precision == "bf16", shared_prefix=bool(getattr(cfg.objective, "shared_prefix", True)))


def run(ctx: StageContext, name: str, cfg: RLStageConfig) -> StageResult:
    """Train on rollouts; outputs and metrics of a train stage plus the rollout totals and their log."""
    from flowlm.flow.stages.train import train_once
    from flowlm.model.tokenizer import load_tokenizer
    from flowlm.rl.source import RolloutSource

    if ctx.world.distributed:  # the learner on every rank, rollouts on rank 0 (flowlm.rl.ranks)
        r, size = cfg.rollout, ctx.world.size
        groups = r.prompts_per_step // r.minibatches  # per optimizer step
        if groups % (cfg.grad_accum * size):
            per = f"rollout.prompts_per_step {r.prompts_per_step}" + (f" / minibatches {r.minibatches} = {groups}"
                                                                        if r.minibatches > 1 else "")
            raise FlowError(f"stage '{name}': {per} must split into whole groups over {size} ranks x grad_accum "
                            f"{cfg.grad_accum}")
    tok = load_tokenizer(ctx.path(ctx.outputs[ctx.latest("tokenizer", name)]["tokenizer"]))
    log = ctx.path(f"{name}/{ROLLOUTS}.jsonl")
    counts: dict[str, int] = {}
    source = RolloutSource(prompt_rows(ctx, name, cfg, counts), tok, cfg.rollout, seed=cfg.seed, max_len=cfg.seq_len,
                           log_path=log, old_logps_fn=old_logps_fn(cfg), plain=cfg.prompt_format == "plain")
    try:
        outputs, metrics = train_once(ctx, name, cfg, name, loader=source)
    finally:
        source.close()
    metrics[ROLLOUTS] = {"prompt_rows": len(source.rows), "dropped_long_prompts": source.dropped_long, **counts,
                         **{k: v for k, v in sorted(source.totals.items())}}
    log_path = ctx.path(outputs["metrics"])
    if ctx.world.is_main and log_path.is_file():  # the per-step log: its curves and in-loop evals in a few numbers
        from flowlm.jsonlines import iter_json_objects
        from flowlm.rl.summary import rl_summary

        try:
            metrics["rl"] = rl_summary(row for _, row in iter_json_objects(log_path))
        except FlowError as exc:  # the model is trained and exported: a log it cannot summarise costs no run
            print(f"warning: stage '{name}': no RL summary in the run record: {exc}", file=sys.stderr)
    return {**outputs, ROLLOUTS: f"{name}/{ROLLOUTS}.jsonl"}, metrics


register(StageKind(name="rl", config=RLStageConfig, run=run, inputs=_inputs, uses_model_section=True))
