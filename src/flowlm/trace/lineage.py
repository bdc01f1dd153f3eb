"""Which token stores trained a model of a flowlm run: the data its stage and every ancestor stage read.

The run record (`flow.json`) holds the recipe and each stage's config and outputs, so the chain is
rebuilt from it: the model directory names its stage (`<run>/<stage>/model`); ancestors are followed
through the stages' declared inputs (the same edges the runner fingerprints); a `train` or `sweep`
stage contributes the store it trained on (`flow.stages.train.data_path`: a tokenizer corpus, a data
stage's store, or a path), both sides of a preference-pair store. A stage that starts from a model of
another run (`init: PATH`, as `flowlm train --objective ... --init` writes it) continues into that run's
lineage. Stages that train on something other than a token store are named in `skipped` with the reason
(RL trains on its own samples; on-policy distillation on the student's; an `init` outside any run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowlm.errors import FlowError


@dataclass
class Lineage:
    run_dir: Path
    stage: str
    stores: list[tuple[str, Path]] = field(default_factory=list)  # (stage, store directory), recipe order
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> why it adds no store


def _context(run_dir: Path, record: dict[str, Any]) -> Any:
    from flowlm.flow.schema import parse_recipe
    from flowlm.flow.stages.registry import StageContext
    from flowlm.train.parallel import World

    raw = dict(record.get("recipe", {}).get("config") or {})
    if not raw:
        raise FlowError(f"{run_dir / 'flow.json'}: no recipe recorded (a run from an older flowlm?)")
    # Every stage as it last ran, in the order stages first ran: one run directory may have seen several
    # recipes (`flowlm train tiny-post --stage sft --run-dir runs/tiny`), and the last one recorded need
    # not hold the stages that made this model.
    stages = {n: st["config"] for n, st in record.get("stages", {}).items() if st.get("config")}
    stages.update({n: c for n, c in (raw.get("stages") or {}).items() if n not in stages})
    recipe = parse_recipe({**raw, "stages": stages}, str(run_dir / "flow.json"))
    outputs = {n: st["outputs"] for n, st in record.get("stages", {}).items() if st.get("status") == "done"}
    return StageContext(run_dir=run_dir, recipe=recipe, world=World(), outputs=outputs, show_progress=False)


def model_stage(run_dir: Path, record: dict[str, Any], model_dir: Path) -> str:
    """The stage whose `model` output is `model_dir`."""
    target = model_dir.resolve()
    for name, st in record.get("stages", {}).items():
        rel = st.get("outputs", {}).get("model")
        if rel and (run_dir / rel).resolve() == target:
            if st.get("status") != "done":
                raise FlowError(f"{model_dir}: stage '{name}' is {st.get('status')}, not done")
            return name
    raise FlowError(f"{model_dir}: no stage of the run in {run_dir} wrote this model (flow.json names none)")


def training_stores(model_dir: str | Path, _seen: frozenset[Path] = frozenset()) -> Lineage:
    """The token stores the model in `model_dir` (inside a flowlm run) and its ancestors trained on; a stage
    initialised from a model of another run (`flowlm train --objective sft --init runs/tiny/long_context/model`)
    continues into that run's lineage."""
    from flowlm.eval.runsettings import find_run_dir
    from flowlm.flow.record import read_record
    from flowlm.flow.stages.registry import declared_inputs
    from flowlm.flow.stages.train import data_path
    from flowlm.train.objectives import objective_class

    model_dir = Path(model_dir)
    run_dir = find_run_dir(model_dir)
    if run_dir is None:
        raise FlowError(f"{model_dir}: not inside a flowlm run (no flow.json above it); name the data with --store")
    record = read_record(run_dir / "flow.json")
    stage = model_stage(run_dir, record, model_dir)
    ctx = _context(run_dir, record)
    out = Lineage(run_dir, stage)
    todo, seen, found = [stage], set(), {}
    while todo:
        name = todo.pop()
        if name in seen or name not in ctx.recipe.stages:
            continue
        seen.add(name)
        cfg = ctx.recipe.stages[name]
        train = cfg.train if cfg.kind == "sweep" else cfg if cfg.kind == "train" else None
        if cfg.kind == "rl":
            out.skipped[name] = "RL trains on the policy's own samples (its prompts are not a token store)"
        elif train is not None and train.on_policy is not None:
            out.skipped[name] = "on-policy distillation trains on the student's own samples"
        elif train is not None:
            kind = objective_class(train.objective.name).data_kind
            path = data_path(ctx, name, train, kind)
            found[name] = [path / "chosen", path / "rejected"] if kind == "pairs" else [path]
        init = getattr(cfg.train if cfg.kind == "sweep" else cfg, "init", "scratch")
        if init != "scratch" and init not in ctx.recipe.stages:
            _outside(out, name, Path(init), _seen | {model_dir.resolve()})
        todo += [r for r in declared_inputs(ctx, name, cfg) if r in ctx.recipe.stages]
    seen_paths = {p.resolve() for _, p in out.stores}
    for name in ctx.recipe.stages:  # this run's stores in recipe order, after the init run's; each store once
        for path in found.get(name, []):
            if path.resolve() not in seen_paths:
                seen_paths.add(path.resolve())
                out.stores.append((name, path))
    return out


def lineage_index(lineage: Lineage, model_dir: str | Path, where: Path | None = None) -> tuple[Any, Any]:
    """(index, tokenizer) for tracing the model in `model_dir` against its lineage's stores: the index kept in
    `where` (default `<run>/trace_index/<key>`), built there once; the model's tokenizer must be the stores'."""
    from flowlm.model.tokenizer import load_tokenizer
    from flowlm.trace.index import cached_index, require_tokenizer, store_key

    stores = [p for _, p in lineage.stores]
    index = cached_index(stores, where or lineage.run_dir / "trace_index" / store_key(stores))
    tok = load_tokenizer(model_dir)
    require_tokenizer(index, tok, str(model_dir))
    return index, tok


def _outside(out: Lineage, stage: str, init: Path, seen: frozenset[Path]) -> None:
    """Add the lineage of a model outside the run that `stage` starts from, or say why it is unknown."""
    from flowlm.eval.runsettings import find_run_dir

    if init.resolve() in seen:
        return
    if find_run_dir(init) is None:
        out.skipped[stage] = f"starts from {init}, not a model of a flowlm run: what trained it is unknown"
        return
    try:
        before = training_stores(init, seen)
    except FlowError as exc:
        out.skipped[stage] = f"starts from {init}: {exc}"
        return
    for st, path in before.stores:
        out.stores.append((f"{before.run_dir.name}/{st}", path))
    out.skipped.update({f"{before.run_dir.name}/{k}": v for k, v in before.skipped.items()})
