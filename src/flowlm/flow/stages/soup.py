"""Stage kind `soup`: a linear average of checkpoints (OLMo 3 soups its midtraining runs), evaluated."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from flowlm.config import Strict
from flowlm.errors import FlowError
from flowlm.flow.stages.common import bpb_eval_fn
from flowlm.flow.stages.registry import StageContext, StageKind, StageResult, register


class SoupStageConfig(Strict):
    """Average the final (or last k) checkpoints of the stages `from` names (or checkpoint paths)."""

    kind: Literal["soup"] = "soup"
    from_: list[str] = Field(alias="from", min_length=1)
    last_k: int = Field(1, gt=0, description="from each train stage take its last k checkpoints")
    weights: list[float] | None = None


def _inputs(ctx: StageContext, name: str, cfg: SoupStageConfig) -> list[str]:
    return [*cfg.from_, ctx.latest("corpus", name)]


def run(ctx: StageContext, name: str, cfg: SoupStageConfig) -> StageResult:
    """Write `<name>/model` and evaluate it with the run's BPB settings."""
    from flowlm.model.hf import load_native
    from flowlm.model.merge import soup
    from flowlm.model.tokenizer import load_tokenizer
    from flowlm.train.parallel import barrier

    paths: list[Path] = []
    for ref in cfg.from_:
        if ref in ctx.outputs:
            if "checkpoints" not in ctx.outputs[ref]:
                paths.append(ctx.model_dir(ref))
                continue
            ckpts = sorted(ctx.path(ctx.outputs[ref]["checkpoints"]).glob("step_*"))
            if len(ckpts) < cfg.last_k:
                raise FlowError(f"soup: stage '{ref}' kept {len(ckpts)} checkpoints, fewer than last_k={cfg.last_k}")
            paths.extend(ckpts[-cfg.last_k :])
        else:
            paths.append(Path(ref))
    out = ctx.path(name) / "model"
    if ctx.world.is_main:
        soup(paths, out, weights=cfg.weights)
    barrier(ctx.world)
    model, _ = load_native(out)
    model.to(ctx.world.device).eval()
    tok = load_tokenizer(out)
    with torch.no_grad():
        evals = bpb_eval_fn(ctx, name, tok)(model)
    ingredients = [str(p.relative_to(ctx.run_dir)) if p.is_relative_to(ctx.run_dir) else str(p) for p in paths]
    return {"model": f"{name}/model"}, {"ingredients": ingredients, "eval": evals}


register(StageKind(name="soup", config=SoupStageConfig, run=run, inputs=_inputs, default_for=("soup",)))
