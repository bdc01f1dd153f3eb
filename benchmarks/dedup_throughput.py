"""MinHash dedup throughput and agreement: flowlm vs datatrove on the same corpus and parameters.

Corpus (like shared/reference/dedup-baselines.md): Python stdlib sources + Project Gutenberg text cut
into 300-3000-char chunks; 10% exact copies, 10% near-duplicates (word edits at 2-10%, sometimes a
sentence appended/removed), 5% hosts of shared boilerplate blocks. Both tools: word 5-grams,
26 bands x 11 rows, seed 1, 2 workers, reading 2 jsonl shards; both keep one document per cluster.

flowlm variants (`VARIANTS`): its own hash family (`flowlm`: independent hash functions, so pairs near
the LSH threshold are coin flips relative to datatrove) and the datatrove-comparable family
(`flowlm_dt`: datatrove's normalisation, spaCy word split, xxh64 shingles and seeded permutations;
`flowlm_dt_ws`: the same with a whitespace word split), each without the true-Jaccard check for a
like-for-like comparison (datatrove has none), and `*_verified` with it (the OLMo 3 setting).
Prints per-tool docs/s, precision/recall vs the planted pairs, the Jaccard of the removed sets
(`agreement_by_variant`), load averages (the machine is shared: compare the ratio measured in one
run, not absolute docs/s), a table and a final `RESULT {json}` line. `agreement` and `ratio` are for
`flowlm_dt` (ratio = its docs/s / datatrove's).

RESULT keys: `docs`, one per variant run, `peer`, `agreement`, `agreement_variant`, `ratio`,
`agreement_by_variant`, `ratio_by_variant` (the last six without `--skip-peer`), `load_avg_start`, `load_avg_end`.

Needs the `bench` extra (datatrove with its JSONL reader's orjson, spaCy and xxhash for `flowlm_dt`):

    pip install -e '.[bench]' && python benchmarks/dedup_throughput.py [--docs 24000] [--smoke]

`--smoke` runs 400 documents (seconds; the numbers mean nothing). The corpus, shards and both tools'
work directories live in one temporary directory (up to ~215 MB at the default size), removed on
success, failure, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import sysconfig
import time
from pathlib import Path

from scratch import scratch_dir

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "text_corpus"


def chunks(text: str, rng: random.Random, lo: int = 300, hi: int = 3000) -> list[str]:
    out, cur, target = [], "", rng.randint(lo, hi)
    for para in re.split(r"\n\s*\n", text):
        cur += para + "\n\n"
        if len(cur) >= target:
            out.append(cur[:hi + 1000].strip())
            cur, target = "", rng.randint(lo, hi)
    return out


def base_docs(n: int, rng: random.Random) -> list[str]:
    texts = []
    for f in sorted(DATA.glob("pg*.txt")):
        t = f.read_text(errors="ignore")
        texts += chunks(t[len(t) // 20: -len(t) // 10], rng)
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "site-packages" in f.parts or "test" in f.parts:
            continue
        texts += chunks(f.read_text(errors="ignore"), rng)
        if len(texts) > 3 * n:
            break
    seen, uniq = set(), []
    for t in texts:  # exact-dedup the base pool so planted pairs are the only duplicates
        if t not in seen and len(t) >= 300:
            seen.add(t)
            uniq.append(t)
    rng.shuffle(uniq)
    return uniq[:n]


def near_dup(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(max(1, int(len(words) * rng.uniform(0.02, 0.10)))):
        j, op = rng.randrange(len(words)), rng.choice("ssdi")
        if op == "s":
            words[j] = rng.choice(words)
        elif op == "d" and len(words) > 10:
            del words[j]
        else:
            words.insert(j, rng.choice(words))
    return " ".join(words)


def make_corpus(n_total: int, seed: int) -> tuple[list[dict], dict[str, str], set[str]]:
    rng = random.Random(seed)
    n_base = int(n_total / 1.2)
    base = base_docs(n_base, rng)
    docs = [{"id": f"b{i}", "text": t} for i, t in enumerate(base)]
    pairs: dict[str, str] = {}
    srcs = rng.sample(range(len(base)), 2 * (n_total // 10))
    for k, s in enumerate(srcs[: n_total // 10]):
        docs.append({"id": f"e{k}", "text": base[s]})
        pairs[f"e{k}"] = f"b{s}"
    for k, s in enumerate(srcs[n_total // 10:]):
        docs.append({"id": f"n{k}", "text": near_dup(base[s], rng)})
        pairs[f"n{k}"] = f"b{s}"
    hosts = set(rng.sample([d["id"] for d in docs[: len(base)] if d["id"] not in set(pairs.values())],
                           n_total // 20))
    blocks = [" ".join(rng.choice(base).split()[:120]) for _ in range(18)]
    for d in docs:
        if d["id"] in hosts:
            d["text"] = d["text"] + "\n\n" + rng.choice(blocks)
    rng.shuffle(docs)
    return docs, pairs, hosts


def score(removed: set[str], pairs: dict[str, str]) -> dict[str, float]:
    tp = sum((a in removed) != (b in removed) for a, b in pairs.items())
    return {"precision": round(tp / max(len(removed), 1), 4), "recall": round(tp / len(pairs), 4),
            "removed": len(removed)}


# name -> MinHashCfg overrides. "unverified" = LSH collisions only (datatrove's behaviour: like with like);
# "verified" = + true-Jaccard >= 0.8 on candidate pairs (the OLMo 3 setting).
VARIANTS = {
    "flowlm": dict(jaccard_threshold=None),
    "flowlm_dt": dict(jaccard_threshold=None, hash_family="datatrove", word_split="spacy"),
    "flowlm_dt_ws": dict(jaccard_threshold=None, hash_family="datatrove", word_split="whitespace"),
    "flowlm_verified": dict(jaccard_threshold=0.8),
    "flowlm_dt_verified": dict(jaccard_threshold=0.8, hash_family="datatrove", word_split="spacy"),
}


def run_flowlm(shard_paths: list[Path], work: Path, overrides: dict) -> tuple[set[str], float]:
    from flowlm.data.dedup.minhash import MinHashCfg, minhash_dedup
    from flowlm.data.executor import LocalExecutor

    t0 = time.perf_counter()
    ex = LocalExecutor(2)
    cfg = MinHashCfg(**overrides)
    shards = ex.map("read", [(str(i), _load, (str(p),)) for i, p in enumerate(shard_paths)])
    mapper = lambda fn, args: ex.map(fn.__name__, [(str(i), fn, a) for i, a in enumerate(args)])
    removed = minhash_dedup(shards, work, cfg, mapper=mapper, verbose=False)
    ids = {shards[i >> 32][i & 0xFFFFFFFF]["id"] for i in removed}
    return ids, time.perf_counter() - t0


def _load(path: str) -> list[dict]:
    from flowlm.data.docs import read_jsonl

    return list(read_jsonl(path))


def run_datatrove(in_dir: Path, work: Path) -> tuple[set[str], float]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    cfg = MinhashConfig(n_grams=5, num_buckets=26, hashes_per_bucket=11)
    t0 = time.perf_counter()
    LocalPipelineExecutor([JsonlReader(str(in_dir)), MinhashDedupSignature(str(work / "sig"), config=cfg)],
                          tasks=2, workers=2, logging_dir=str(work / "l1")).run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(work / "sig"), str(work / "bk"), config=cfg)],
                          tasks=cfg.num_buckets, workers=2, logging_dir=str(work / "l2")).run()
    LocalPipelineExecutor([MinhashDedupCluster(str(work / "bk"), str(work / "rm"), config=cfg)],
                          tasks=1, logging_dir=str(work / "l3")).run()
    LocalPipelineExecutor([JsonlReader(str(in_dir)), MinhashDedupFilter(
        str(work / "rm"), exclusion_writer=JsonlWriter(str(work / "ex"), compression=None)),
        JsonlWriter(str(work / "out"), compression=None)],
        tasks=2, workers=2, logging_dir=str(work / "l4")).run()
    dt = time.perf_counter() - t0
    ids = {json.loads(ln)["id"] for f in (work / "ex").glob("*.jsonl") for ln in f.open()}
    return ids, dt


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def table(res: dict, names: list[str]) -> None:
    print(f"{'tool':<20}{'docs/s':>9}{'precision':>11}{'recall':>8}{'removed':>9}{'agreement':>11}{'x peer':>8}")
    for n in names + (["peer"] if "peer" in res else []):
        r = res[n]
        agr = res.get("agreement_by_variant", {}).get(n, "")
        rat = res.get("ratio_by_variant", {}).get(n, "")
        print(f"{n:<20}{r['docs_per_s']:>9}{r['precision']:>11}{r['recall']:>8}{r['removed']:>9}{agr!s:>11}{rat!s:>8}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=24000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {sorted(VARIANTS)}")
    ap.add_argument("--smoke", action="store_true", help="400 documents: checks the script runs, in seconds")
    a = ap.parse_args()
    if a.smoke:
        a.docs = 400
    sys.path.insert(0, str(REPO / "src"))
    with scratch_dir("dedupbench-") as tmp:
        res = run(a, tmp)
    print("RESULT " + json.dumps(res))
    return 0


def run(a: argparse.Namespace, tmp: Path) -> dict:
    """Write the corpus under `tmp`, run every variant (and datatrove), print the table; the RESULT dict."""
    from flowlm.data.docs import write_jsonl

    docs, pairs, hosts = make_corpus(a.docs, a.seed)
    half = len(docs) // 2
    paths = [tmp / "in" / "part-0.jsonl", tmp / "in" / "part-1.jsonl"]
    write_jsonl(paths[0], docs[:half])
    write_jsonl(paths[1], docs[half:])
    mb = sum(len(d["text"]) for d in docs) / 1e6
    print(f"corpus: {len(docs)} docs, {mb:.1f} MB, {len(pairs)} planted pairs, {len(hosts)} boilerplate hosts")
    res: dict = {"docs": len(docs), "load_avg_start": load()}
    ids_of: dict[str, set[str]] = {}
    for name in a.variants.split(","):
        ids_of[name], dt = run_flowlm(paths, tmp / name, VARIANTS[name])
        res[name] = {"seconds": round(dt, 2), "docs_per_s": round(len(docs) / dt, 1), **score(ids_of[name], pairs),
                     "load_avg_end": load()}
        print(name, res[name], flush=True)
    if not a.skip_peer:
        peer, dt = run_datatrove(tmp / "in", tmp / "datatrove")
        res["peer"] = {"tool": "datatrove", "seconds": round(dt, 2), "docs_per_s": round(len(docs) / dt, 1),
                       **score(peer, pairs), "load_avg_end": load()}
        print("datatrove", res["peer"])
        res["agreement_by_variant"] = {k: round(len(v & peer) / max(len(v | peer), 1), 4) for k, v in ids_of.items()}
        main_name = "flowlm_dt" if "flowlm_dt" in ids_of else next(iter(ids_of))
        res["agreement_variant"] = main_name
        res["agreement"] = res["agreement_by_variant"][main_name]
        res["ratio"] = round(res[main_name]["docs_per_s"] / res["peer"]["docs_per_s"], 2)
        res["ratio_by_variant"] = {k: round(res[k]["docs_per_s"] / res["peer"]["docs_per_s"], 2) for k in ids_of}
    res["load_avg_end"] = load()
    table(res, list(ids_of))
    return res


if __name__ == "__main__":
    raise SystemExit(main())
