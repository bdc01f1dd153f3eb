"""Run a recipe: stages in order, each skipped when its fingerprint is unchanged and resumed after a crash.

A stage's fingerprint hashes its effective config, the model section, the content hashes of the
artifacts it reads (earlier stages' output hashes) and the code version. Re-running the same recipe
therefore skips finished stages; a stage that was `running` or `failed` with the same fingerprint
resumes from its last checkpoint; a changed stage (and everything downstream, through the hashes) reruns.
With `--stage` (`flowlm train RECIPE --stage NAME ...`) only the named stages run; the stages they read
(declared inputs, transitively) must be done and unchanged, or it is a one-line error naming the first
one; every other stage is not touched.
Under torchrun, stages that write shared artifacts (their kind says `main_rank_only`) run on rank 0
while the other ranks wait; training and evaluation stages run on every rank; only rank 0 writes the
record, and every rank receives each finished stage's entry.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from flowlm.config import apply_overrides, read_recipe
from flowlm.errors import ConfigError, FlowError
from flowlm.flow.record import FlowRecord, code_version, sha256_json, sha256_path
from flowlm.flow.schema import Recipe, parse_recipe
from flowlm.flow.stages import StageContext, declared_inputs, get_kind
from flowlm.flow.stages.registry import context_for
from flowlm.train.parallel import World, barrier, init_world


def load_recipe(name_or_path: str, overrides: list[str]) -> tuple[Recipe, str]:
    raw, origin = read_recipe(name_or_path)
    raw = apply_overrides(raw, overrides)
    raw.setdefault("name", Path(name_or_path).stem)
    return parse_recipe(raw, origin), origin


def stage_inputs(ctx: StageContext, name: str, stage: Any, record: FlowRecord) -> dict[str, str]:
    """Content hashes of the artifacts a stage reads (its kind's declared inputs), keyed by stage or path."""
    inputs = {}
    for ref in declared_inputs(ctx, name, stage):
        if ref in record.stages:
            inputs[ref] = record.stages[ref]["output_hash"]
        else:
            inputs[ref] = sha256_path(Path(ref))
    return inputs


def run_recipe(
    recipe: Recipe,
    origin: str,
    overrides: list[str],
    run_dir: Path,
    *,
    only: list[str] | None = None,
    show_progress: bool = True,
) -> FlowRecord:
    """Execute `recipe` in `run_dir`; returns the (saved) run record."""
    world = init_world()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    prepare_run_dir(run_dir)
    record = FlowRecord.open(run_dir)
    if world.is_main:
        record.set_recipe(recipe.name, origin, overrides, recipe.model_dump(mode="json", by_alias=True))
    ctx = StageContext(run_dir=run_dir, recipe=recipe, world=world, show_progress=show_progress)
    if only:
        unknown = [s for s in only if s not in recipe.stages]
        if unknown:
            raise FlowError(f"unknown stage(s) {unknown}; recipe '{recipe.name}' has {list(recipe.stages)}")
    names = list(recipe.stages)
    last = max(names.index(s) for s in only) if only else len(names) - 1
    needed = needed_stages(ctx, only) if only else set(names)
    for name in names[: last + 1]:  # stages after the last selected one are not touched
        if name in needed:  # with --stage: the selected stages and what they read; the rest is not touched
            _run_stage(ctx, record, name, recipe.stages[name], world, selected=only is None or name in only)
    return record


def needed_stages(ctx: StageContext, only: list[str]) -> set[str]:
    """The stages `only` names and, transitively, the earlier stages they declare as inputs."""
    stages, todo, seen = ctx.recipe.stages, list(only), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [ref for ref in declared_inputs(ctx, name, stages[name]) if ref in stages]
    return seen


def prepare_run_dir(run_dir: Path) -> None:
    """Create `run_dir` (and its parents); a path that is a file, or one that cannot be made, is a one-line error."""
    from flowlm.atomic import make_dir

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():  # a usage error (exit 2), before make_dir's FlowError
        raise ConfigError(f"--run-dir {run_dir}: is a file, not a run directory")
    make_dir(run_dir, f"--run-dir {run_dir}")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise FlowError(f"--run-dir {run_dir}: not writable")


def _run_stage(ctx: StageContext, record: FlowRecord, name: str, stage: Any, world: World, selected: bool) -> None:
    kind = get_kind(stage.kind)
    config = stage.model_dump(mode="json", by_alias=True)
    inputs = stage_inputs(ctx, name, stage, record)
    model_section = ctx.recipe.model.model_dump(mode="json") if kind.uses_model_section else None
    fingerprint = sha256_json({"config": config, "model": model_section, "inputs": inputs, "code": code_version()["source_sha256"]})
    prev = record.stages.get(name, {})
    if prev.get("status") == "done" and prev.get("fingerprint") == fingerprint and _outputs_exist(ctx.run_dir, prev):
        ctx.outputs[name] = prev["outputs"]
        _say(world, f"[skip] {name}: unchanged (fingerprint {fingerprint[:12]})")
        return
    if not selected:
        raise FlowError(f"stage '{name}' is needed but not done; run it first (or drop --stage)")
    resumable = prev.get("fingerprint") == fingerprint and prev.get("status") in ("running", "failed")
    if not resumable and world.is_main and ctx.path(name).exists():
        shutil.rmtree(ctx.path(name))  # a changed stage starts clean; nothing of another config survives
    barrier(world, f"the start of stage '{name}'")
    if world.is_main:
        record.begin(name, stage.kind, config, fingerprint, inputs)
    _say(world, f"[run ] {name} ({stage.kind})" + (" — resuming" if resumable else ""))
    t0 = time.perf_counter()
    runs_here = world.is_main or not kind.main_rank_only
    try:
        if runs_here:
            outputs, metrics = kind.run(context_for(ctx, name, list(inputs)), name, stage)
    except BaseException as exc:
        if world.is_main:
            record.fail(name, f"{type(exc).__name__}: {exc}")
            (ctx.run_dir / f"{name}.error.log").write_text(traceback.format_exc())
        raise
    if world.is_main:
        out_hash = sha256_json({k: sha256_path(ctx.run_dir / v) for k, v in sorted(outputs.items()) if k != "metrics" and k != "checkpoints"})
        record.finish(name, outputs, out_hash, metrics, time.perf_counter() - t0)
    barrier(world, f"the end of stage '{name}'")
    # Under torchrun only rank 0 holds the record; the others need the outputs and their hash.
    if world.distributed:
        import torch.distributed as dist

        box = [record.stages.get(name) if world.is_main else None]
        dist.broadcast_object_list(box, src=0)
        record.stages[name] = box[0]
    ctx.outputs[name] = record.stages[name]["outputs"] if record.stages.get(name) else outputs


def _outputs_exist(run_dir: Path, st: dict[str, Any]) -> bool:
    return all((run_dir / p).exists() for p in st.get("outputs", {}).values())


def _say(world: World, msg: str) -> None:
    if world.is_main:
        from rich.console import Console

        Console(stderr=True, highlight=False).print(msg, markup=False)
