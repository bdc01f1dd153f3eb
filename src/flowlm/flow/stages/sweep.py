"""Stage kind `sweep`: train one config at several learning rates, pick by an eval metric, soup the best.

OLMo 3 post-training sweeps the SFT learning rate and soups the best runs (seed 4.2); this stage does
that in one step of a recipe:

    sft:
      kind: sweep
      lrs: [5.0e-4, 1.0e-3, 2.0e-3]
      metric: builtin/pass@1          # a key of the train config's final eval (BPB or generation_eval)
      mode: max
      soup_top: 2                     # average the best 2 runs (1 = keep the best run as it is)
      train: {init: long_context, data: sft, objective: sft, seq_len: 512, batch_size: 16, ...}

Each run trains in `<name>/lr_<i>/` exactly as a `train` stage would (same data order, seed and
evaluation); its final eval picks the winners. The soup of the `soup_top` best is evaluated with the
same function and written to `<name>/model`; `flow.json` gets every run's metric, the ranking, and the
soup's eval beside the best single run's, so a soup that loses to its best ingredient is visible.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from flowlm.config import Strict
from flowlm.errors import FlowError
from flowlm.flow.stages.registry import StageContext, StageKind, StageResult, register
from flowlm.flow.stages.train import TrainStageConfig


class SweepStageConfig(Strict):
    """A train config, the learning rates to try, and how to pick and soup the results."""

    kind: Literal["sweep"] = "sweep"
    train: TrainStageConfig
    lrs: list[float] = Field(min_length=2, description="learning rates (each overrides train.optim.lr)")
    metric: str = Field(description="final eval key to rank by, e.g. 'builtin/pass@1' or 'heldout_bpb'")
    mode: Literal["max", "min"] = "max"
    soup_top: int = Field(2, gt=0, description="how many of the best runs to average (1 = the best run)")

    @field_validator("train", mode="before")
    @classmethod
    def _train_kind(cls, value: Any) -> Any:
        return {**value, "kind": "train"} if isinstance(value, dict) else value

    @field_validator("lrs")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(lr <= 0 for lr in value) or len(set(value)) != len(value):
            raise ValueError("lrs must be distinct positive numbers")
        return value


def _inputs(ctx: StageContext, name: str, cfg: SweepStageConfig) -> list[str]:
    from flowlm.flow.stages.train import _inputs as train_inputs

    return [*train_inputs(ctx, name, cfg.train), ctx.latest("corpus", name)]


def run(ctx: StageContext, name: str, cfg: SweepStageConfig) -> StageResult:
    """Train every learning rate, rank the runs by `metric`, soup the best `soup_top`, evaluate the soup."""
    from flowlm.flow.stages.train import train_once

    if cfg.soup_top > len(cfg.lrs):
        raise FlowError(f"stage '{name}': soup_top {cfg.soup_top} > {len(cfg.lrs)} learning rates")
    runs = []
    for i, lr in enumerate(cfg.lrs):
        train = cfg.train.model_copy(update={"optim": cfg.train.optim.model_copy(update={"lr": lr})})
        outputs, metrics = train_once(ctx, name, train, f"{name}/lr_{i}")
        final = metrics.get("eval", {})
        if cfg.metric not in final:
            raise FlowError(f"stage '{name}': metric '{cfg.metric}' is not in the runs' final eval {sorted(final)}")
        runs.append({"lr": lr, "dir": f"{name}/lr_{i}", "model": outputs["model"], "value": float(final[cfg.metric]),
                     "eval": final})
    ranked = sorted(runs, key=lambda r: r["value"], reverse=cfg.mode == "max")
    best = ranked[: cfg.soup_top]
    model_rel = f"{name}/model"
    soup_eval = _soup(ctx, name, cfg, [r["model"] for r in best], model_rel)
    return {"model": model_rel, "runs": name}, {
        "metric": cfg.metric,
        "runs": [{k: r[k] for k in ("lr", "dir", "value")} for r in runs],
        "ranking": [r["lr"] for r in ranked],
        "souped": [r["lr"] for r in best],
        "best_run": {"lr": ranked[0]["lr"], "eval": ranked[0]["eval"]},
        "eval": soup_eval,
    }


def _soup(ctx: StageContext, name: str, cfg: SweepStageConfig, models: list[str], out_rel: str) -> dict[str, float]:
    """Average `models` into `out_rel` (rank 0 writes) and evaluate it as the runs were evaluated."""
    import torch

    from flowlm.flow.stages.common import export_model
    from flowlm.flow.stages.train import eval_fn
    from flowlm.model.adapter import load_causal_lm
    from flowlm.model.merge import soup
    from flowlm.model.tokenizer import load_tokenizer
    from flowlm.train.parallel import barrier

    out = ctx.path(out_rel)
    paths = [ctx.path(m) for m in models]
    if ctx.world.is_main:
        if len(paths) == 1:
            export_model(paths[0], out)
        else:
            soup(paths, out)
    barrier(ctx.world)
    model = load_causal_lm(out, device=ctx.world.device).eval()
    tok = load_tokenizer(out)
    with torch.no_grad():
        return eval_fn(ctx, name, cfg.train, tok)(model)


register(StageKind(name="sweep", config=SweepStageConfig, run=run, inputs=_inputs, uses_model_section=True))
