"""`flowlm train --objective NAME --init CKPT --data FILE`: one objective on your own data, as a recipe.

The command builds a three-stage recipe and runs it through the same runner as every flow, so a direct
run gets the run record, the fingerprints, resume after a crash and the report for free:

    corpus      source: files (your jsonl / parquet files as corpus `data`; no curation)
    tokenizer   path: the checkpoint's own tokenizer (chat corpora get assistant masks, pair corpora
                become chosen / rejected stores)
    <NAME>      kind: train, init: the checkpoint, data: data, objective: {name: NAME}

An objective that trains on rollouts (`grpo`) gets stage kind `rl` instead, with one `--data` JSONL of
prompt rows as its `prompts`, or a benchmark-format file as `NAME=PATH` (`gsm8k=/data/gsm8k/train.jsonl.gz`,
read as `flowlm rl prompts` reads it), and an empty corpus stage (the tokenizer stage needs one):

    <NAME>      kind: rl, init: the checkpoint, prompts: the file, objective: {name: NAME}

On-policy distillation (`--objective distill` with `stages.distill.on_policy={...}`) samples the student
from prompts instead of training on a corpus: its one `--data` JSONL (prompt rows, or chat rows whose
final answer is dropped) becomes the stage's `data`, and the corpus stage stays empty, as for `grpo`.

Overrides address the stages by these names (`stages.sft.epochs=1`, `stages.dpo.objective.beta=5`,
`stages.tokenizer.assistant_loss=last`, `stages.grpo.steps=100`, `stages.grpo.rollout.group_size=8`).
`--print-recipe` shows the recipe instead of running it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowlm.errors import ConfigError

# Loop settings a direct run starts from (each one is overridable); lengths come from the objective.
DEFAULTS: dict[str, Any] = {"seq_len": 2048, "batch_size": 8, "checkpoint_every": 100,
                            "optim": {"lr": 1.0e-5, "weight_decay": 0.0},
                            "schedule": {"kind": "cosine", "warmup_steps": 0, "final_lr_ratio": 0.0}}
OBJECTIVE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {"optim": {"lr": 2.0e-5, "weight_decay": 0.0}},
    "dpo": {"optim": {"lr": 1.0e-6, "weight_decay": 0.0},
            "schedule": {"kind": "linear", "warmup_steps": 0, "final_lr_ratio": 0.0}},
    "reward_model": {"optim": {"lr": 5.0e-6, "weight_decay": 0.0}},
}
# An rl stage (objective data_kind "rollouts"): TRL's and veRL's GRPO learning rate, constant (OLMo 3 RL);
# `steps` has no default (set stages.<NAME>.steps); batch_size follows the rollout settings.
RL_DEFAULTS: dict[str, Any] = {"seq_len": 2048, "checkpoint_every": 100, "optim": {"lr": 1.0e-6, "weight_decay": 0.0},
                               "schedule": {"kind": "constant", "warmup_steps": 0}}


def objective_recipe(objective: str, init: str, data: list[str], *, name: str | None = None) -> dict[str, Any]:
    """The raw recipe of a direct run of `objective` from checkpoint `init` on the files `data`."""
    from flowlm.train.objectives import objective_class, objective_names

    if objective not in objective_names():
        raise ConfigError(f"--objective: unknown objective '{objective}'; known: {', '.join(objective_names())}")
    if not data:
        raise ConfigError("--objective needs --data FILE (jsonl or parquet; repeatable)")
    if not Path(init).is_dir():
        raise ConfigError(f"--init {init}: not a checkpoint directory")
    from flowlm.rl.prompts import benchmark_spec

    rollouts = objective_class(objective).data_kind == "rollouts"
    for f in data:
        if rollouts and benchmark_spec(f) is not None:  # gsm8k=/data/gsm8k/train.jsonl.gz: checked when read
            continue
        if not Path(f).exists():
            raise ConfigError(f"--data {f}: no such file")
        if Path(f).is_dir():
            raise ConfigError(f"--data {f}: is a directory, not a data file (name the jsonl / parquet files in it)")
    init = str(Path(init).resolve())
    if rollouts:
        if len(data) != 1:
            raise ConfigError(f"--objective {objective}: one --data file of prompt rows (JSONL), got {len(data)}")
        spec = benchmark_spec(data[0])
        prompts = str(Path(data[0]).resolve()) if spec is None else f"{spec[0]}={spec[1].resolve()}"
        return {
            "name": name or objective,
            "stages": {
                "corpus": {"kind": "corpus", "source": "files", "curate": None, "files": {}},
                "tokenizer": {"kind": "tokenizer", "path": init},
                objective: {**RL_DEFAULTS, "kind": "rl", "init": init, "prompts": prompts,
                            "objective": {"name": objective}},
            },
        }
    train = {**DEFAULTS, **OBJECTIVE_DEFAULTS.get(objective, {}), "kind": "train", "init": init, "data": "data",
             "objective": {"name": objective}}
    return {
        "name": name or objective,
        "stages": {
            "corpus": {"kind": "corpus", "source": "files", "curate": None,
                       "files": {"data": [str(Path(f).resolve()) for f in data]}},
            "tokenizer": {"kind": "tokenizer", "path": init},
            objective: train,
        },
    }


def with_overrides(raw: dict[str, Any], objective: str, data: list[str]) -> dict[str, Any]:
    """The direct recipe after the user's overrides, adjusted for what they switched on: on-policy
    distillation reads its prompts from the `--data` file (a corpus of it would need `text` / `messages`)."""
    stage = raw.get("stages", {}).get(objective)
    if not isinstance(stage, dict) or stage.get("on_policy") is None or stage.get("data") != "data":
        return raw
    if len(data) != 1 or Path(data[0]).suffix == ".parquet":
        raise ConfigError(f"--objective {objective} with on_policy: one --data JSONL of prompt rows, got {data}")
    stages = {**raw["stages"], "corpus": {**raw["stages"]["corpus"], "files": {}},
              objective: {**stage, "data": str(Path(data[0]).resolve())}}
    return {**raw, "stages": stages}
