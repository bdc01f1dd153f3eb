"""Tracing against infini-gram (the engine behind OLMoTrace): index build time, count agreement, and the
maximal matching spans of model-output-like token sequences, side by side on one token store.

Corpus: the Project Gutenberg books of `shared/data/text_corpus`, cut into 2-6k character documents,
plus Python standard-library sources up to `--mb` megabytes; a byte-level BPE (vocab 8,192) trained on
its first 2 MB; `tokenize_to_store` writes the token store (end-of-text appended, as a flow does).
Both tools index exactly those documents: flowlm's `TraceIndex.build`; infini-gram 2.6's indexer
(`python -m infini_gram.indexing`, 2 CPUs, its Rust suffix-array builder) over the same ids written in
its own layout (`tokenized.0`: each document after a 0xFFFF separator; `offset.0`), so its own
tokenization step is skipped.

- Agreement: `count` of `--queries` token sequences (substrings of the documents, 1-16 tokens, and
  random sequences) must be equal; and the maximal matching spans of every output (flowlm:
  `maximal_spans(match_lengths(...))` with every token edge allowed; infini-gram: `attribute` with no
  delimiters, `min_len` 1, no count cap, no word-start rule) must be the same set.
- Outputs: `--outputs` windows of 128 tokens from random documents with 10% of their tokens replaced by
  random ids (model output that copies runs of its data and departs from it).
- Speed: build seconds, and maximal spans per second over all outputs with up to 10 documents located
  per span (infini-gram: `attribute` with `max_cnt` 10, which lists at most 10 documents per span and
  drops the spans seen more often, work flowlm still does), for each tool; ratios are the peer's time
  over flowlm's (>1 = flowlm faster). Also flowlm's spans alone, and its full `trace_text` (spans, unigram
  filter, document retrieval, snippets, BM25) per output.

    pip install -e '.[bench]' && python benchmarks/trace_throughput.py [--mb 24] [--outputs 100] [--smoke]

`--smoke` runs a 1 MB corpus (seconds; the numbers mean nothing). Ends with `RESULT {json}`; keys:
`tokens`, `docs`, `build_s` {flowlm, infinigram}, `build_ratio`, `spans_per_s` {flowlm, infinigram},
`spans_ratio`, `spans_only_per_s`, `trace_ms_per_output`, `counts_equal`, `queries`, `spans_equal`,
`outputs`, `load_avg_start`, `load_avg_end`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
from scratch import scratch_dir

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "text_corpus"


def corpus(mb: float, rng: random.Random) -> list[str]:
    docs: list[str] = []
    for f in sorted(DATA.glob("pg*.txt")):
        text = f.read_text(encoding="utf-8", errors="replace")
        i = 0
        while i < len(text):
            n = rng.randint(2000, 6000)
            docs.append(text[i: i + n])
            i += n
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(stdlib.rglob("*.py")):
        if sum(len(d) for d in docs) >= mb * 1e6:
            break
        if "test" not in f.parts and "site-packages" not in f.parts:
            docs.append(f.read_text(encoding="utf-8", errors="replace"))
    out, total = [], 0
    for d in docs:
        if total >= mb * 1e6:
            break
        out.append(d)
        total += len(d)
    return out


def infinigram_index(store, save: Path) -> float:
    """Write the store's documents in infini-gram's layout and index them; returns the indexing seconds."""
    save.mkdir()
    (save.parent / "ig-empty").mkdir(exist_ok=True)
    offsets, pos = [], 0
    with open(save / "tokenized.0", "wb") as fh:
        for i in range(len(store)):
            blob = b"\xff\xff" + np.asarray(store.doc(i), dtype="<u2").tobytes()
            offsets.append(pos)
            fh.write(blob)
            pos += len(blob)
    (save / "offset.0").write_bytes(np.asarray(offsets, dtype=np.uint64).tobytes())
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "infini_gram.indexing", "--data_dir", str(save.parent / "ig-empty"),
                           "--save_dir", str(save), "--token_dtype", "u16", "--cpus", "2", "--mem", "8",
                           "--ulimit", str(resource.getrlimit(resource.RLIMIT_NOFILE)[1])],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not (save / "table.0").is_file():
        raise SystemExit(f"infini-gram indexing failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=24.0)
    ap.add_argument("--outputs", type=int, default=100)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.mb, args.outputs, args.queries = 1.0, 8, 200
    from infini_gram.engine import InfiniGramEngine

    from flowlm.data.store import tokenize_to_store
    from flowlm.model.tokenizer import train_tokenizer
    from flowlm.trace.index import TraceIndex
    from flowlm.trace.spans import maximal_spans
    from flowlm.trace.tracer import match_lengths, trace_text

    load_start = os.getloadavg()
    rng, nrng = random.Random(0), np.random.default_rng(0)
    with scratch_dir("tracebench-") as tmp:
        docs = corpus(args.mb, rng)
        head, budget = [], 2_000_000
        for d in docs:
            head.append(d)
            budget -= len(d)
            if budget <= 0:
                break
        tok = train_tokenizer(head, 8192, tmp / "tok")
        store = tokenize_to_store(tok, docs, tmp / "store")
        print(f"corpus: {len(docs)} documents, {sum(map(len, docs)) / 1e6:.1f} MB, {store.n_tokens:,} tokens",
              file=sys.stderr)

        t0 = time.perf_counter()
        ours = TraceIndex.build(tmp / "flowlm-index", [store.path])
        build_ours = time.perf_counter() - t0
        build_peer = infinigram_index(store, tmp / "ig-index")
        peer = InfiniGramEngine(index_dir=str(tmp / "ig-index"), eos_token_id=int(tok.eos_token_id), vocab_size=65535)

        queries = []
        for k in range(args.queries):
            if k % 4 == 3:
                queries.append(nrng.integers(0, len(tok), size=int(nrng.integers(1, 4))).tolist())
            else:
                d = store.doc(int(nrng.integers(0, len(store))))
                n = int(nrng.integers(1, 17))
                s = int(nrng.integers(0, max(1, len(d) - n)))
                queries.append(np.asarray(d[s: s + n]).tolist())
        mismatched = [q for q in queries if ours.count(q) != peer.count(q)["count"]]

        outputs = []
        while len(outputs) < args.outputs:
            d = np.asarray(store.doc(int(nrng.integers(0, len(store)))), dtype=np.int64)
            if len(d) < 140:
                continue
            s = int(nrng.integers(0, len(d) - 128))
            w = d[s: s + 128].copy()
            flip = nrng.random(128) < 0.10
            w[flip] = nrng.integers(0, len(tok), size=int(flip.sum()))
            outputs.append(w)

        t0 = time.perf_counter()
        spans_ours = [maximal_spans(match_lengths(ours, w), np.ones(129, bool), np.zeros(128, bool)) for w in outputs]
        time_spans = time.perf_counter() - t0
        for w, spans in zip(outputs, spans_ours):  # and up to 10 documents per span, as OLMoTrace shows
            for a, b in spans:
                [ours.locate(int(p)) for p in ours.positions(*ours.find(w[a:b]), limit=10)]
        time_ours = time.perf_counter() - t0
        got = [peer.attribute(w.tolist(), delim_ids=[], min_len=1, max_cnt=1 << 40, enforce_bow=False) for w in outputs]
        spans_peer = [sorted((s["l"], s["r"]) for s in g["spans"]) for g in got]
        differ = sum(sorted(a) != b for a, b in zip(spans_ours, spans_peer))
        n_spans = sum(map(len, spans_ours))
        # timed with max_cnt 10: the peer lists at most 10 documents per span (and drops spans seen more
        # often, work flowlm still does); with no cap it lists every occurrence of every span
        t0 = time.perf_counter()
        for w in outputs:
            peer.attribute(w.tolist(), delim_ids=[], min_len=1, max_cnt=10, enforce_bow=False)
        time_peer = time.perf_counter() - t0

        texts = [tok.decode(w.tolist()) for w in outputs]
        t0 = time.perf_counter()
        for t in texts:
            trace_text(ours, tok, t)
        trace_ms = (time.perf_counter() - t0) / len(texts) * 1e3

    result = {
        "tokens": int(store.n_tokens), "docs": len(docs),
        "build_s": {"flowlm": round(build_ours, 2), "infinigram": round(build_peer, 2)},
        "build_ratio": round(build_peer / build_ours, 2),
        "spans_per_s": {"flowlm": round(n_spans / time_ours, 1), "infinigram": round(n_spans / time_peer, 1)},
        "spans_ratio": round(time_peer / time_ours, 3),
        "spans_only_per_s": round(n_spans / time_spans, 1),
        "trace_ms_per_output": round(trace_ms, 1),
        "counts_equal": not mismatched, "queries": len(queries), "spans_equal": differ == 0, "outputs": len(outputs),
        "load_avg_start": [round(x, 2) for x in load_start], "load_avg_end": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"{'':12}{'flowlm':>10}{'infini-gram':>13}{'ratio':>8}")
    print(f"{'build s':12}{build_ours:>10.2f}{build_peer:>13.2f}{result['build_ratio']:>8.2f}")
    print(f"{'spans/s':12}{result['spans_per_s']['flowlm']:>10.1f}{result['spans_per_s']['infinigram']:>13.1f}"
          f"{result['spans_ratio']:>8.3f}")
    print(f"counts equal on {len(queries)} queries: {not mismatched} {mismatched[:3]}; "
          f"maximal spans equal on {len(outputs)} outputs: {differ == 0} ({differ} differ)")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
