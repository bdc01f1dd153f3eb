"""Helpers several stage kinds share: checkpoint export, the HF config writer, the run's BPB evaluation,
the prompt rows of sampling stages."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch

from flowlm.atomic import atomic_dir
from flowlm.errors import FlowError
from flowlm.flow.stages.registry import StageContext

TRAINING_STATE_FILES = ("optimizer.pt", "trainer.pt", "checkpoint.json")


def export_model(checkpoint: Path, dest: Path) -> None:
    """Copy the HF-loadable part of a checkpoint (weights, config, tokenizer) to `dest`, atomically."""
    import shutil

    with atomic_dir(dest) as tmp:
        for f in checkpoint.iterdir():
            if f.is_file() and f.name not in TRAINING_STATE_FILES:
                shutil.copy2(f, tmp / f.name)


def hf_config_writer(model_cfg: Any, tok: Any) -> Callable[[Path], None]:
    """Writes `config.json` (HF Olmo3), `flowlm.json` (native config) and the tokenizer into a checkpoint."""
    from flowlm.atomic import atomic_write_json
    from flowlm.model.hf import checkpoint_meta, to_hf_config

    ids = {"eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id}

    def write(d: Path) -> None:
        to_hf_config(model_cfg, **ids).save_pretrained(str(d))
        atomic_write_json(d / "flowlm.json", checkpoint_meta(model_cfg.to_dict()))
        tok.save_pretrained(str(d))

    return write


def bpb_settings(recipe_eval: Any, sets: dict[str, list[dict[str, str]]]) -> tuple[dict[str, list[dict[str, str]]], list[str]]:
    """The eval sets and held-out documents a recipe's `eval` section selects from a corpus's `bpb_eval.json`."""
    if recipe_eval.tasks is not None:
        unknown = sorted(set(recipe_eval.tasks) - set(sets))
        if unknown:
            raise FlowError(f"eval.tasks: unknown task(s) {unknown}; available: {sorted(sets)}")
        sets = {t: sets[t] for t in recipe_eval.tasks}
    sets = dict(sets)
    heldout = [d["continuation"] for d in sets.pop("heldout", [])][: recipe_eval.heldout_docs]
    return sets, heldout


def bpb_eval_fn(ctx: StageContext, name: str, tok: Any) -> Callable[[torch.nn.Module], dict[str, float]]:
    """BPB on the corpus stage's held-out gold continuations (+ held-out loss), as the recipe says.

    The corpus stage is the last one before `name`: kinds that call this declare it as an input.
    """
    from flowlm.eval.bpb import evaluate_bpb

    corpus = ctx.outputs[ctx.latest("corpus", name)]
    sets, heldout = bpb_settings(ctx.recipe.eval, json.loads(ctx.path(corpus["bpb_eval"]).read_text()))
    ecfg = ctx.recipe.eval

    def fn(model: torch.nn.Module) -> dict[str, float]:
        return evaluate_bpb(model, tok, sets, max_items=ecfg.max_items, batch_tokens=ecfg.batch_tokens, heldout_docs=heldout)

    return fn


def prompt_rows(ctx: StageContext, name: str, source: str, *, n_builtin: int, seed: int,
                tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Prompt rows a sampling stage reads: `builtin` (`n_builtin` training-split task prompts, of the
    generators in `tasks` or all), an earlier data stage (its `rows`), a JSONL file, or `NAME=PATH`, a
    benchmark-format file read as `flowlm rl prompts` reads it (`flowlm.rl.prompts`). The stage declares
    `source` as an input (unless builtin; a benchmark spec: its file, `spec_file`)."""
    from flowlm.jsonlines import iter_json_objects
    from flowlm.post.procedural import builtin_rows
    from flowlm.rl.prompts import benchmark_spec, eval_file_warning, suite_rows

    if source == "builtin":
        return builtin_rows(n_builtin, seed, tasks=tasks)
    spec = benchmark_spec(source)
    if spec is not None:
        rows, path = suite_rows(*spec)
        if (warning := eval_file_warning(spec[0], path)) is not None and ctx.world.is_main:
            print(f"warning: stage '{name}': {warning}", file=sys.stderr)
        return rows
    if source in ctx.recipe.stages:
        outs = ctx.outputs[source]
        if "rows" not in outs:
            raise FlowError(f"stage '{name}': stage '{source}' made no rows (it produced {sorted(outs)})")
        src = ctx.path(outs["rows"])
    else:
        src = Path(source)
        if not src.is_file():
            raise FlowError(f"stage '{name}': prompts '{source}' are not 'builtin', a data stage or a file")
    return [row for _, row in iter_json_objects(src)]
