"""Stage kind `corpus`: the stage corpora (jsonl) from the built-in data or user files, plus eval sets.

With `curate` set (the default), the pretraining corpus goes through the Dolma-3-style pipeline
(filters -> exact / MinHash / substring dedup -> quality-aware upsampling -> decontamination against the
run's own held-out eval sets) before the tokenizer is trained on it. User files (jsonl or parquet) may hold
plain documents (`text`) or chat rows in the schemas of `flowlm.data.chat`, stored as normalised
`messages`; every corpus is tokenized by the next tokenizer stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from flowlm.atomic import atomic_write_text, write_jsonl
from flowlm.config import Strict, deep_merge
from flowlm.data.pipeline import PipelineConfig, builtin_config
from flowlm.flow.stages.registry import StageContext, StageKind, StageResult, register


class CorpusStageConfig(Strict):
    """Build the stage corpora from the built-in data (`source: builtin`) or jsonl files (`source: files`)."""

    kind: Literal["corpus"] = "corpus"
    curate: PipelineConfig | None = Field(default_factory=builtin_config, description="pipeline settings or null")
    source: Literal["builtin", "files"] = "builtin"
    files: dict[str, list[str]] = Field(default_factory=dict, description="corpus name -> jsonl / parquet paths")
    pretrain_bytes: int = Field(2_000_000, gt=0)
    midtrain_bytes: int = Field(600_000, gt=0)
    long_docs: int = Field(64, ge=0)
    long_share: float = Field(0.34, gt=0, lt=1, description="token share of long documents in the long-context mix")
    long_min_words: int = Field(1000, gt=0, description="a 'naturally long' document has at least this many words")
    seed: int = 0

    @field_validator("curate", mode="before")
    @classmethod
    def _curation(cls, value: Any) -> Any:
        # A mapping overrides the built-in preset key by key (not PipelineConfig's web-text defaults).
        if isinstance(value, dict):
            return deep_merge(builtin_config().model_dump(mode="json"), value)
        return value


def run(ctx: StageContext, name: str, cfg: CorpusStageConfig) -> StageResult:
    """Write `<corpus>.jsonl` for every corpus, the BPB eval sets and held-out docs under `<name>/`."""
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
        corpora = {cname: _read_files(paths) for cname, paths in cfg.files.items()}
    outputs: dict[str, str] = {}
    metrics: dict[str, Any] = {}
    evals = builtin.bpb_eval_sets(cfg.seed)
    evals["heldout"] = [{"context": "", "continuation": t} for t in builtin.heldout_docs(ctx.recipe.eval.heldout_docs)]
    if cfg.curate is not None and "pretrain" in corpora:
        corpora["pretrain"], metrics["curation"] = curate(corpora["pretrain"], evals, out / "curation", cfg.curate)
        outputs["curation_stats"] = f"{name}/curation/stats.json"
    for cname, docs in corpora.items():
        write_jsonl(out / f"{cname}.jsonl", docs)
        outputs[cname] = f"{name}/{cname}.jsonl"
        metrics[f"{cname}_docs"] = len(docs)
        metrics[f"{cname}_bytes"] = sum(len(_doc_text(d).encode()) for d in docs)
    atomic_write_text(out / "bpb_eval.json", json.dumps(evals))
    outputs["bpb_eval"] = f"{name}/bpb_eval.json"
    metrics["eval_items"] = {t: len(v) for t, v in evals.items()}
    return outputs, metrics


def corpus_names(outputs: dict[str, str]) -> list[str]:
    """The corpora (jsonl documents) among a corpus stage's outputs."""
    return [k for k, v in outputs.items() if v.endswith(".jsonl")]


def _doc_text(doc: dict[str, Any]) -> str:
    if "text" in doc:
        return doc["text"]
    return "".join(str(m.get("content") or "") for m in doc.get("messages", []))


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
    write_jsonl(bench, [{"task_id": f"{t}:{i}", "question": it["context"], "answer": it["continuation"]}
                        for t, items in evals.items() if t != "heldout" for i, it in enumerate(items)])
    cfg = cfg.model_copy(update={"decontam": cfg.decontam.model_copy(update={"benchmarks": (str(bench),)})})
    result = run_pipeline(docs, out, cfg)
    kept = list(result.iter_docs())
    stats = json.loads(result.stats_path.read_text())
    summary = {"docs_in": len(docs), "docs_out": len(kept), "conserved": stats["conserved"], "quarantined": stats["quarantine"]["count"], "steps": stats["steps"]}
    return kept, summary


def _read_files(paths: list[str]) -> list[dict[str, Any]]:
    """User corpora (jsonl, .gz, .zst, parquet). Text documents go through the corpus reader (a malformed line
    is a one-line FlowError naming file:line); a file of chat rows (`messages`, ShareGPT `conversations`,
    prompt + completion / response) is read strictly and normalised by `flowlm.data.chat.read_chat_rows`."""
    from flowlm.data.chat import is_chat_file, read_chat_rows
    from flowlm.data.docs import read_docs

    out: list[dict[str, Any]] = []
    for p in paths:
        out.extend(read_chat_rows(p) if is_chat_file(p) else read_docs(p))
    return out


register(StageKind(name="corpus", config=CorpusStageConfig, run=run, main_rank_only=True, default_for=("corpus",)))
