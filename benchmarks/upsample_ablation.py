"""Ablation: quality-aware upsampling (curve) vs flat filtering at a fixed token budget.

Both arms run the same pipeline on the same corpus (default: flowlm's built-in corpus) and differ
only in `upsample.mode`: `curve` (drop the bottom 40% by quality, repeat the rest on a monotone curve
capped at 7x, integral = budget) vs `flat` (drop the bottom 40%, repeat every kept document by the
same factor). Both corpora hold the same number of tokens (`--budget-ratio` x the input). Each arm's
kept documents go to a proxy callable `train_eval(docs, seed) -> {task: bpb}` (`--proxy
module:function`; default `flowlm.train.proxy:run_docs`, which trains a tiny OLMo-3 for a fixed
number of tokens, so both arms also train on the same token budget). Every arm is trained with
`--seeds` training seeds; the spread across seeds is the noise floor the difference must clear.

Convention of the final `RESULT {json}` line (lower BPB is better):
- `flowlm`: mean BPB (over tasks, then seeds) of the upsampling (`curve`) arm, the OLMo 3 method;
- `peer`: the same for the `flat` arm, the baseline it is compared with;
- `ratio` = peer / flowlm: > 1 means upsampling wins (as the benchmarks' throughput ratios, > 1 = ours better);
- `delta_mean_bpb` = flowlm - peer (negative = upsampling wins) and `noise_sd` (pooled per-seed sd).
Without a proxy the script stops with a clear message (no made-up numbers).

RESULT keys: `flowlm`, `peer`, `ratio`, `delta_mean_bpb`, `noise_sd`, `curve`, `flat` (per arm: docs,
tokens, BPB per task with its sd and per-seed runs, timings), `load_avg_start`, `load_avg_end`.

Needs no extra (`pip install -e .`). Each arm's pipeline output (and the proxy's tokenizer and
token stores) live in temporary directories removed on success, failure, Ctrl-C and SIGTERM.

    python benchmarks/upsample_ablation.py [--seeds 3] [--steps N] [--proxy module:function] [--smoke]

`--smoke`: a 300 kB corpus, 2 seeds of 4 proxy steps each (seconds; the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

from scratch import scratch_dir


def load_proxy(spec: str | None):
    spec = spec or "flowlm.train.proxy:run_docs"
    mod, _, fn = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError):
        return None


def run_arm(mode: str, docs: list[dict], a: argparse.Namespace, proxy, kw: dict) -> dict:
    """Pipeline with `upsample.mode=mode`, then one proxy per training seed."""
    from flowlm.data.pipeline import builtin_config, run_pipeline
    from flowlm.data.upsample import UpsampleCfg

    t0 = time.perf_counter()
    cfg = builtin_config(upsample=UpsampleCfg(mode=mode, budget_ratio=a.budget_ratio))
    with scratch_dir(f"abl-{mode}-") as out:
        res = run_pipeline(docs, out, cfg)
        kept = list(res.iter_docs())
        tokens = res.stats.steps["upsample"].out()[1]
    t1 = time.perf_counter()
    runs = [proxy(kept, a.seed + s, **kw) for s in range(a.seeds)]
    tasks = sorted(runs[0])
    return {"docs": len(kept), "unique_docs": len({d["id"] for d in kept}),
            "tokens": tokens,
            "bpb": {t: round(statistics.mean(r[t] for r in runs), 4) for t in tasks},
            "sd": {t: round(statistics.stdev(r[t] for r in runs), 4) if len(runs) > 1 else None for t in tasks},
            "runs": [{t: round(r[t], 4) for t in tasks} for r in runs],
            "pipeline_s": round(t1 - t0, 1), "proxy_s": round(time.perf_counter() - t1, 1)}


def table(out: dict) -> str:
    tasks = list(out["curve"]["bpb"])
    lines = ["arm    docs   tokens   " + "  ".join(f"{t:>22}" for t in tasks),
             "-" * (24 + 24 * len(tasks))]
    for mode in ("curve", "flat"):
        r = out[mode]
        cells = [f"{r['bpb'][t]:.4f} ± {r['sd'][t] or 0:.4f}" for t in tasks]
        lines.append(f"{mode:<6} {r['docs']:>5} {r['tokens']:>8}   " + "  ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxy", help="module:function taking (docs, seed) -> {task: bpb}")
    ap.add_argument("--budget-ratio", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per arm (noise estimate)")
    ap.add_argument("--steps", type=int, help="proxy optimizer steps (default: the proxy's own)")
    ap.add_argument("--smoke", action="store_true", help="tiny corpus, 2 seeds x 4 steps: checks the script runs")
    a = ap.parse_args()
    if a.smoke:
        a.seeds, a.steps = 2, 4
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from flowlm.data.builtin import pretrain_docs

    proxy = load_proxy(a.proxy)
    if proxy is None:
        print("no proxy trainer available (flowlm.train.proxy:run_docs missing; pass --proxy)")
        return 2
    kw = {"steps": a.steps} if a.steps else {}
    if a.smoke and a.proxy is None:  # the default proxy's own knobs: a smaller tokenizer sample and eval
        kw |= {"tokenizer_bytes": 200_000, "eval_items": 8}
    docs = pretrain_docs(a.seed, max_bytes=300_000) if a.smoke else pretrain_docs(a.seed)
    out: dict = {"load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    for mode in ("curve", "flat"):
        out[mode] = run_arm(mode, docs, a, proxy, kw)
        print(mode, {k: v for k, v in out[mode].items() if k != "runs"}, flush=True)
    print(table(out))
    out["flowlm"], out["peer"] = out["curve"]["bpb"]["bpb"], out["flat"]["bpb"]["bpb"]
    out["ratio"] = round(out["peer"] / out["flowlm"], 4)
    out["delta_mean_bpb"] = round(out["flowlm"] - out["peer"], 4)
    sds = [out[m]["sd"]["bpb"] for m in ("curve", "flat") if out[m]["sd"]["bpb"] is not None]
    out["noise_sd"] = round(statistics.mean(sds), 4) if sds else None
    out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
