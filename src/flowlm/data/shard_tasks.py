"""Per-shard task functions of the pipeline (module-level so executors can pickle them).

Every task reads one input shard, writes one output shard (and optionally an exclusion shard of
rejected documents with their reason), and returns its `StepStats` as a dict. Conservation is
exact by construction: each input document is counted once as kept or dropped(reason); text
rewrites are counted as `modified` token deltas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

from flowlm.data.accounting import StepStats, count_tokens
from flowlm.data.docs import JsonlWriter, Quarantine, read_docs, read_jsonl

Doc = dict[str, Any]
# a decision: (docs to emit (the first is "the" kept doc; more = upsampled copies), drop reason,
#              modification reason)
Decision = tuple[list[Doc], str | None, str | None]


def rewrite_shard(step: str, in_path: str, out_path: str, excl_path: str | None,
                  decide: Callable[[int, Doc], Decision]) -> dict[str, Any]:
    """Apply `decide` to every document of a shard with full accounting."""
    st = StepStats(step)
    excl = JsonlWriter(excl_path) if excl_path else None
    with JsonlWriter(out_path) as out:
        for i, doc in enumerate(read_jsonl(in_path)):
            tin = count_tokens(doc["text"])
            st.record_in(tin)
            emit, reason, mod = decide(i, doc)
            if reason is not None or not emit:
                st.record_drop(reason or step, tin)
                if excl is not None:
                    excl.write({**doc, "metadata": {**doc.get("metadata", {}), "excluded_by": step,
                                                    "reason": reason}})
                continue
            st.record_kept(tin)
            tout = count_tokens(emit[0]["text"])
            if mod is not None and tout != tin:
                st.record_modified(mod, tin - tout)
            for j, d in enumerate(emit):
                out.write(d)
                if j:
                    st.record_added(tout)
    if excl is not None:
        excl.close()
    return st.to_dict()


def read_task(src: str, out_path: str) -> dict[str, Any]:
    """Ingest one input file: valid docs go to the shard, malformed lines to the quarantine."""
    st = StepStats("read")
    q = Quarantine()
    with JsonlWriter(out_path) as out:
        for doc in read_docs(src, q):
            st.record_in(count_tokens(doc["text"]))
            st.record_kept(count_tokens(doc["text"]))
            out.write(doc)
    for _ in q.items:
        st.record_in(0)
        st.record_drop("malformed", 0)
    return {"stats": st.to_dict(), "quarantine": q.items}


def filter_task(in_path: str, out_path: str, excl: str | None, cfg_json: str) -> dict[str, Any]:
    from flowlm.data.filters import FilterConfig, filter_doc

    cfg = FilterConfig.model_validate_json(cfg_json)

    def decide(_: int, doc: Doc) -> Decision:
        new, reason = filter_doc(doc, cfg)
        return ([new] if new else []), reason, "pii_masked"

    return rewrite_shard("filter", in_path, out_path, excl, decide)


def drop_task(in_path: str, out_path: str, excl: str | None, step: str,
              removed: dict[str, str]) -> dict[str, Any]:
    """Drop the listed line indices (dedup results computed by the driver); value = survivor id."""
    def decide(i: int, doc: Doc) -> Decision:
        if str(i) in removed:
            return [], f"{step}_duplicate", None
        return [doc], None, None

    return rewrite_shard(step, in_path, out_path, excl, decide)


def minhash_signature_task(in_path: str, shard: int, work: str, cfg_json: str) -> int:
    from flowlm.data.dedup.minhash import MinHashCfg, signature_shard

    return signature_shard(list(read_jsonl(in_path)), shard, work,
                           MinHashCfg.model_validate_json(cfg_json))


def substring_task(in_path: str, out_path: str, excl: str | None, cfg_json: str) -> dict[str, Any]:
    from flowlm.data.dedup.substring import SubstringCfg, apply_substring_dedup

    docs = list(read_jsonl(in_path))
    res = apply_substring_dedup(docs, SubstringCfg.model_validate_json(cfg_json))

    def decide(i: int, _: Doc) -> Decision:
        new, _removed = res[i]
        return ([new] if new else []), (None if new else "substring_emptied"), "substring_removed"

    return rewrite_shard("substring", in_path, out_path, excl, decide)


def score_task(in_path: str, clf_path: str, topic_key: str) -> dict[str, Any]:
    from flowlm.data.quality import QualityClassifier, topic_of

    clf = QualityClassifier.load(clf_path)
    docs = list(read_jsonl(in_path))
    return {"scores": clf.score([d["text"] for d in docs]).tolist(),
            "topics": [topic_of(d, topic_key) for d in docs],
            "tokens": [count_tokens(d["text"]) for d in docs], "ids": [d["id"] for d in docs]}


def upsample_task(in_path: str, out_path: str, excl: str | None, copies: list[int],
                  pct: list[float]) -> dict[str, Any]:
    def decide(i: int, doc: Doc) -> Decision:
        if copies[i] == 0:
            return [], "quality_dropped", None
        meta = {**doc.get("metadata", {}), "quality_pct": round(pct[i], 4)}
        return [{**doc, "metadata": {**meta, "copy": k}} for k in range(copies[i])], None, None

    return rewrite_shard("upsample", in_path, out_path, excl, decide)


_DECO: dict[str, Any] = {}


def decontam_task(in_path: str, out_path: str, excl: str | None, report_path: str,
                  bench: list[str], cfg_json: str) -> dict[str, Any]:
    """Drop documents with benchmark hits; verdicts are cached per document id so upsampled copies
    are scanned once; hits go to a per-shard jsonl report."""
    from flowlm.data.decontam import Decontaminator, DecontamCfg, load_benchmark

    key = json.dumps([bench, cfg_json])
    if key not in _DECO:  # one index per worker process
        items = [it for b in bench for it in load_benchmark(b)]
        _DECO[key] = Decontaminator(items, DecontamCfg.model_validate_json(cfg_json))
    deco = _DECO[key]
    seen: dict[str, list[dict[str, Any]]] = {}
    with JsonlWriter(report_path) as rep:
        def decide(_: int, doc: Doc) -> Decision:
            if doc["id"] not in seen:
                seen[doc["id"]] = deco.scan(doc)
                for h in seen[doc["id"]]:
                    h.pop("item_key", None)
                    rep.write(h)
            hits = seen[doc["id"]]
            return ([], f"decontam:{hits[0]['benchmark']}", None) if hits else ([doc], None, None)

        return rewrite_shard("decontam", in_path, out_path, excl, decide)


def iter_shard_docs(paths: list[Path]) -> Iterator[tuple[int, int, Doc]]:
    for s, p in enumerate(paths):
        for i, d in enumerate(read_jsonl(p)):
            yield s, i, d


