"""Stage implementations: each reads earlier artifacts from the run directory and writes its own.

A stage function takes a `StageContext` and its typed config and returns `(outputs, metrics)`: output
paths (relative to the run dir) and headline numbers. Checkpoints are the interface between stages.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from flowlm.errors import FlowError
from flowlm.flow.schema import CorpusStageConfig, Recipe, SoupStageConfig, TokenizerStageConfig, TrainStageConfig
from flowlm.train.parallel import World, barrier

HF_FILES = ("model.safetensors", "config.json", "flowlm.json", "generation_config.json")


@dataclass
class StageContext:
    run_dir: Path
    recipe: Recipe
    world: World
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # stage name -> its outputs
    show_progress: bool = True

    def path(self, rel: str) -> Path:
        return self.run_dir / rel

    def latest(self, kind: str, before: str) -> str:
        """Name of the last stage of `kind` that comes before stage `before` in the recipe."""
        found = None
        for name, st in self.recipe.stages.items():
            if name == before:
                break
            if st.kind == kind:
                found = name
        if found is None:
            raise FlowError(f"stage '{before}' needs an earlier '{kind}' stage in recipe '{self.recipe.name}'")
        return found


# -- corpus ---------------------------------------------------------------------------------------------
def run_corpus(ctx: StageContext, name: str, cfg: CorpusStageConfig) -> tuple[dict[str, str], dict[str, Any]]:
    """Write `pretrain/midtrain/long.jsonl`, the BPB eval sets and held-out docs under `<name>/`."""
    from flowlm.data import builtin

    out = ctx.path(name)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.source == "builtin":
        pretrain = builtin.pretrain_docs(cfg.seed, cfg.pretrain_bytes)
        midtrain = builtin.midtrain_docs(cfg.seed, cfg.midtrain_bytes)
        corpora = {
            "pretrain": pretrain,
            "midtrain": midtrain,
            # short data for the long-context mix: the midtraining mix, as OLMo 3 took it from Dolmino
            # (seed 3.5: 66% high-quality short data); long docs are trimmed if it runs short
            "long": long_mix(builtin.long_docs(cfg.seed, cfg.long_docs), midtrain, cfg),
        }
    else:
        corpora = {cname: _read_jsonl_files(paths) for cname, paths in cfg.files.items()}
    outputs: dict[str, str] = {}
    metrics: dict[str, Any] = {}
    evals = builtin.bpb_eval_sets(cfg.seed)
    evals["heldout"] = [{"context": "", "continuation": t} for t in builtin.heldout_docs(ctx.recipe.eval.heldout_docs)]
    if cfg.curate is not None and "pretrain" in corpora:
        corpora["pretrain"], metrics["curation"] = curate(corpora["pretrain"], evals, out / "curation", cfg.curate)
        outputs["curation_stats"] = f"{name}/curation/stats.json"
    for cname, docs in corpora.items():
        _write_jsonl(out / f"{cname}.jsonl", docs)
        outputs[cname] = f"{name}/{cname}.jsonl"
        metrics[f"{cname}_docs"] = len(docs)
        metrics[f"{cname}_bytes"] = sum(len(d["text"].encode()) for d in docs)
    (out / "bpb_eval.json").write_text(json.dumps(evals))
    outputs["bpb_eval"] = f"{name}/bpb_eval.json"
    metrics["eval_items"] = {t: len(v) for t, v in evals.items()}
    return outputs, metrics


def long_mix(long_docs: list[dict[str, Any]], short_docs: list[dict[str, Any]], cfg: CorpusStageConfig) -> list[dict[str, Any]]:
    """Seed 3.5.1: naturally long documents (gzip-ratio filtered) plus synthetic CWE / REX tasks over them,
    mixed with short data so long documents are `long_share` of the tokens (OLMo 3: 34% long, 66% short)."""
    from flowlm.data.longctx import LongCtxCfg, as_doc, make_tasks, mix_long_short, select_long

    lcfg = LongCtxCfg(min_tokens=cfg.long_min_words, long_share=cfg.long_share, seed=cfg.seed)
    selected = select_long(long_docs, lcfg)
    tasks = [as_doc(t) for t in make_tasks(selected, lcfg)]
    return mix_long_short(selected + tasks, short_docs, lcfg)


def curate(docs: list[dict[str, Any]], evals: dict[str, list[dict[str, str]]], out: Path, cfg: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the data pipeline on `docs`; decontaminate against the run's own eval sets. Returns the kept
    documents (upsampled copies included) and the accounting summary (conservation is checked inside)."""
    from flowlm.data.pipeline import run_pipeline

    bench = out / "benchmarks" / "flowlm_eval.jsonl"
    bench.parent.mkdir(parents=True, exist_ok=True)
    _write_jsonl(bench, [{"task_id": f"{t}:{i}", "question": it["context"], "answer": it["continuation"]} for t, items in evals.items() if t != "heldout" for i, it in enumerate(items)])
    cfg = cfg.model_copy(update={"decontam": cfg.decontam.model_copy(update={"benchmarks": (str(bench),)})})
    result = run_pipeline(docs, out, cfg)
    kept = list(result.iter_docs())
    stats = json.loads(result.stats_path.read_text())
    summary = {"docs_in": len(docs), "docs_out": len(kept), "conserved": stats["conserved"], "quarantined": stats["quarantine"]["count"], "steps": stats["steps"]}
    return kept, summary


def _read_jsonl_files(paths: list[str]) -> list[dict[str, Any]]:
    """User corpora (jsonl, .gz, .zst): a malformed line is a one-line FlowError naming file:line."""
    from flowlm.data.docs import read_jsonl

    return [doc for p in paths for doc in read_jsonl(p)]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- tokenizer ------------------------------------------------------------------------------------------
def run_tokenizer(ctx: StageContext, name: str, cfg: TokenizerStageConfig) -> tuple[dict[str, str], dict[str, Any]]:
    """Train (or load) the tokenizer, then tokenize every corpus of the preceding corpus stage."""
    from flowlm.data.store import tokenize_to_store
    from flowlm.model.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer

    corpus = ctx.outputs[ctx.latest("corpus", name)]
    out = ctx.path(name)
    tok_dir = out / "tokenizer"
    if cfg.path:
        tok = load_tokenizer(cfg.path)
        tok.save_pretrained(str(tok_dir))
    else:
        texts, budget = [], cfg.train_bytes
        for doc in _read_jsonl(ctx.path(corpus["pretrain"])):
            texts.append(doc["text"])
            budget -= len(doc["text"])
            if budget <= 0:
                break
        tok = train_tokenizer(texts, cfg.vocab_size, tok_dir)
    outputs = {"tokenizer": f"{name}/tokenizer"}
    metrics: dict[str, Any] = {"vocab_size": len(tok)}
    thash = tokenizer_hash(tok_dir)
    for cname in ("pretrain", "midtrain", "long"):
        if cname not in corpus:
            continue
        docs = _read_jsonl(ctx.path(corpus[cname]))
        store = tokenize_to_store(tok, docs, out / "stores" / cname)
        outputs[f"store:{cname}"] = f"{name}/stores/{cname}"
        metrics[f"{cname}_tokens"] = int(store.n_tokens)
    metrics["tokenizer_hash"] = thash
    return outputs, metrics


# -- train ----------------------------------------------------------------------------------------------
def run_train(ctx: StageContext, name: str, cfg: TrainStageConfig) -> tuple[dict[str, str], dict[str, Any]]:
    """Pretrain / midtrain / long-context: the engine with the LM objective; resumes from checkpoints."""
    from flowlm.data.loader import PackedLoader
    from flowlm.data.pack import PackedDataset
    from flowlm.data.store import TokenStore
    from flowlm.model.tokenizer import load_tokenizer, tokenizer_hash
    from flowlm.train.engine import EvalCallback, Trainer
    from flowlm.train.objectives.lm import LMObjective
    from flowlm.train.parallel import parallelize

    tok_stage = ctx.outputs[ctx.latest("tokenizer", name)]
    tok_dir = ctx.path(tok_stage["tokenizer"])
    tok = load_tokenizer(tok_dir)
    model, model_cfg = build_model(ctx, cfg, vocab_size=len(tok))
    store_path = ctx.path(tok_stage[f"store:{cfg.data}"]) if f"store:{cfg.data}" in tok_stage else Path(cfg.data)
    store = TokenStore.open(store_path, expect_vocab_size=len(tok), expect_tokenizer_hash=tokenizer_hash(tok_dir))
    loader = PackedLoader(PackedDataset(store, cfg.seq_len, seed=cfg.seed), cfg.batch_size, seed=cfg.seed)
    if ctx.world.distributed:
        loader = loader.shard(ctx.world.rank, ctx.world.size)
    model = parallelize(model.to(ctx.world.device), ctx.world, compile=cfg.compile, bf16=cfg.precision == "bf16")
    evaluator = EvalCallback(make_eval_fn(ctx, tok), every=cfg.eval_every)
    out = ctx.path(name)
    trainer = Trainer(
        model,
        LMObjective(z_loss=cfg.z_loss),
        loader,
        cfg,
        out,
        world=ctx.world,
        callbacks=[evaluator],
        write_config=hf_config_writer(model_cfg, tok),
        flops_per_token=model.flops_per_token(cfg.seq_len),
        show_progress=ctx.show_progress,
        description=name,
    )
    resumed = trainer.resume()
    summary = trainer.fit()
    final = trainer.ckpt_root / f"step_{cfg.steps:07d}"
    if ctx.world.is_main:
        export_model(final, out / "model")
    barrier(ctx.world)
    metrics = {k: v for k, v in summary.items() if k != "eval"}
    metrics.update(eval=summary.get("eval", {}), resumed_from_checkpoint=resumed)
    first = evaluator.history[0] if evaluator.history and evaluator.history[0]["step"] == 0 else None
    if first is not None:
        metrics["eval_init"] = {k[5:]: v for k, v in first.items() if k.startswith("eval/")}
    checkpoints = sorted(p.name for p in trainer.ckpt_root.glob("step_*"))
    return {"model": f"{name}/model", "checkpoints": f"{name}/checkpoints", "metrics": f"{name}/metrics.jsonl"}, {
        **metrics,
        "checkpoints_kept": checkpoints,
        "model_config": model_cfg.to_dict(),
    }


def build_model(ctx: StageContext, cfg: TrainStageConfig, vocab_size: int):
    """A fresh model (seeded) or the weights of `cfg.init`, with the stage's YaRN / window changes."""
    from flowlm.model.config import ModelConfig, YarnConfig
    from flowlm.model.hf import load_native
    from flowlm.model.olmo3 import Olmo3

    if cfg.init == "scratch":
        section = ctx.recipe.model
        try:
            model_cfg = ModelConfig.preset(section.preset, **{"vocab_size": vocab_size, **section.overrides})
        except TypeError as exc:
            raise FlowError(f"recipe model.overrides: {exc}") from None
        torch.manual_seed(cfg.seed)
        model = Olmo3(model_cfg)
    else:
        src = ctx.path(ctx.outputs[cfg.init]["model"]) if cfg.init in ctx.outputs else Path(cfg.init)
        if not is_olmo3_checkpoint(src):
            raise FlowError(f"{src}: base-flow stages train OLMo-3 checkpoints; other architectures train through "
                            "the engine with flowlm.model.adapter.load_causal_lm (post-training stages)")
        model, model_cfg = load_native(src)
    changes: dict[str, Any] = {}
    if cfg.yarn is not None:
        changes["yarn"] = YarnConfig(
            factor=cfg.yarn.factor,
            beta_fast=cfg.yarn.beta_fast,
            beta_slow=cfg.yarn.beta_slow,
            original_max_seq_len=cfg.yarn.original_max_seq_len,
        )
    if cfg.sliding_window is not None:
        changes["sliding_window"] = cfg.sliding_window
    if cfg.seq_len > model_cfg.max_seq_len:
        changes["max_seq_len"] = cfg.seq_len
    if changes:
        model_cfg = dataclasses.replace(model_cfg, **changes)
        state = model.state_dict()
        model = Olmo3(model_cfg)
        model.load_state_dict(state)
    return model, model_cfg


def is_olmo3_checkpoint(path: Path) -> bool:
    """True for flowlm checkpoints and HF checkpoints whose config says `olmo3`."""
    if (path / "flowlm.json").is_file():
        return True
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == "olmo3"
    except (OSError, json.JSONDecodeError):
        return False


def hf_config_writer(model_cfg: Any, tok: Any) -> Callable[[Path], None]:
    """Writes `config.json` (HF Olmo3), `flowlm.json` (native config) and the tokenizer into a checkpoint."""
    from flowlm.model.hf import to_hf_config

    ids = {"eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id}

    def write(d: Path) -> None:
        to_hf_config(model_cfg, **ids).save_pretrained(str(d))
        meta = {"format": "flowlm-checkpoint", "version": 1, "model_config": model_cfg.to_dict(), "meta": {}}
        (d / "flowlm.json").write_text(json.dumps(meta, indent=1))
        tok.save_pretrained(str(d))

    return write


def export_model(checkpoint: Path, dest: Path) -> None:
    """Copy the HF-loadable part of a checkpoint (weights, config, tokenizer) to `dest`, atomically."""
    tmp = dest.with_name(f".tmp-{dest.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in checkpoint.iterdir():
        if f.is_file() and f.name not in ("optimizer.pt", "trainer.pt", "checkpoint.json"):
            shutil.copy2(f, tmp / f.name)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.replace(dest)


def make_eval_fn(ctx: StageContext, tok: Any) -> Callable[[torch.nn.Module], dict[str, float]]:
    """BPB on the corpus stage's held-out gold continuations (+ held-out loss), as the recipe says."""
    from flowlm.eval.bpb import evaluate_bpb

    corpus = ctx.outputs[ctx.latest("corpus", "\0")]
    sets = json.loads(ctx.path(corpus["bpb_eval"]).read_text())
    ecfg = ctx.recipe.eval
    if ecfg.tasks is not None:
        unknown = sorted(set(ecfg.tasks) - set(sets))
        if unknown:
            raise FlowError(f"eval.tasks: unknown task(s) {unknown}; available: {sorted(sets)}")
        sets = {t: sets[t] for t in ecfg.tasks}
    heldout = [d["continuation"] for d in sets.pop("heldout", [])][: ecfg.heldout_docs]

    def fn(model: torch.nn.Module) -> dict[str, float]:
        return evaluate_bpb(model, tok, sets, max_items=ecfg.max_items, batch_tokens=ecfg.batch_tokens, heldout_docs=heldout)

    return fn


# -- soup -----------------------------------------------------------------------------------------------
def run_soup(ctx: StageContext, name: str, cfg: SoupStageConfig) -> tuple[dict[str, str], dict[str, Any]]:
    """Average the final (or last k) checkpoints of the named stages; evaluate the result."""
    from flowlm.model.hf import load_native
    from flowlm.model.merge import soup
    from flowlm.model.tokenizer import load_tokenizer

    paths: list[Path] = []
    for ref in cfg.from_:
        if ref in ctx.outputs:
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
        evals = make_eval_fn(ctx, tok)(model)
    return {"model": f"{name}/model"}, {"ingredients": [str(p.relative_to(ctx.run_dir)) if p.is_relative_to(ctx.run_dir) else str(p) for p in paths], "eval": evals}


STAGE_FUNCS: dict[str, Callable[..., tuple[dict[str, str], dict[str, Any]]]] = {
    "corpus": run_corpus,
    "tokenizer": run_tokenizer,
    "train": run_train,
    "soup": run_soup,
}
