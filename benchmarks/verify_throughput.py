"""Throughput of flowlm.verify: math verifications/s and sandboxed code tests/s.

Side by side in one run:
- flowlm: the `VerifyPool` (2 warm worker processes, forked once) over the whole workload;
- peer: the naive baseline, one fresh `python` subprocess per item that imports the verifier and
  scores that single item (same verifier, same sandbox, no pool, no warm workers) — how a script
  that shells out per test behaves.
Math: MATH-500 reference answers, boxed (accepted) and corrupted (rejected). Code: HumanEval
canonical solutions (one `check(candidate)` test each), sandboxed. The baseline runs a fixed
subset (`--peer-items`) because each item costs a full interpreter start.
Sandbox overhead: median wall time of one sandboxed empty program (`run_python("pass")`) on every
backend usable here (`bwrap`, `bwrap-bundled`, `unsafe`), next to a bare `python -I -S -c pass`.
`--smoke` runs a small slice of everything (seconds; for CI and quick checks, not for numbers).
Ends with `RESULT {json}`: `flowlm`/`peer`/`ratio` are math verifications/s; code numbers are in
`code_flowlm`/`code_peer`/`code_ratio`; `sandbox_ms` holds the per-backend run times (ms) and
`sandbox` / `sandbox_info` say which backend scored the code.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests" / "verify"))

from mathforms import corrupt  # noqa: E402

from flowlm.verify.pool import Task, VerifyPool  # noqa: E402

_ONE = ("import json,sys\nfrom flowlm.verify import verify\nt=json.loads(sys.stdin.read())\n"
        "v=verify(t['name'],t['completion'],t['ground_truth'],**t['row'])\nprint(json.dumps(v.score))\n")


def math_tasks() -> list[Task]:
    answers = [json.loads(line)["answer"] for line in open(DATA / "math500" / "test.jsonl")]
    tasks = []
    for g in answers:
        tasks += [Task("math", f"The answer is $\\boxed{{{g}}}$.", g, {}), Task("math", f"\\boxed{{{corrupt(g)}}}", g, {})]
    return tasks


def code_tasks() -> list[Task]:
    with gzip.open(DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    return [Task("humaneval", r["canonical_solution"], {"test": r["test"], "entry_point": r["entry_point"]},
                 {"prompt": r["prompt"], "entry_point": r["entry_point"]}) for r in rows]


def sandbox_ms(reps: int) -> dict[str, float]:
    """Median wall ms of one sandboxed empty program per usable backend, and of a bare interpreter."""
    from flowlm.verify.sandbox import ISOLATING, _bwrap_exe, _bwrap_problem, _python, run_python

    def median_ms(fn: Any) -> float:
        fn()  # warm caches (probe, filter, boot source)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return round(statistics.median(times), 1)

    backends = [b for b in ISOLATING if _bwrap_exe(b) and _bwrap_problem(_bwrap_exe(b) or "") is None] + ["unsafe"]
    out = {b: median_ms(lambda b=b: run_python("pass", backend=b)) for b in backends}
    out["bare_python"] = median_ms(lambda: subprocess.run([_python(), "-I", "-S", "-B", "-c", "pass"], check=True))
    return out


def run_pool(tasks: list[Task], workers: int) -> tuple[float, list[float]]:
    """Items/s through a fresh pool (pool start-up included)."""
    t0 = time.perf_counter()
    with VerifyPool(workers=workers, timeout=60) as pool:
        scores = [v.score for v in pool.map(tasks)]
    return len(tasks) / (time.perf_counter() - t0), scores


def run_peer(tasks: list[Task]) -> tuple[float, list[float]]:
    """Items/s with one fresh interpreter per item, sequentially."""
    t0 = time.perf_counter()
    scores = []
    for t in tasks:
        payload = json.dumps({"name": t.name, "completion": t.completion, "ground_truth": t.ground_truth, "row": t.row})
        r = subprocess.run([sys.executable, "-c", _ONE], input=payload, capture_output=True, text=True, timeout=120)
        scores.append(float(r.stdout.strip() or 0.0))
    return len(tasks) / (time.perf_counter() - t0), scores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--peer-items", type=int, default=24, help="items the per-process baseline runs")
    ap.add_argument("--smoke", action="store_true", help="a small slice of everything (seconds)")
    args = ap.parse_args()
    from flowlm.verify.sandbox import backend_info

    info = backend_info()  # raises SandboxUnavailable (one line naming the fix) when nothing isolates
    res: dict[str, Any] = {"workers": args.workers, "sandbox": info["backend"], "smoke": args.smoke}
    mt, ct = math_tasks(), code_tasks()
    peer_items = args.peer_items
    if args.smoke:
        mt, ct, peer_items = mt[:100], ct[:24], min(peer_items, 3)
    res["math_items"], res["code_items"] = len(mt), len(ct)
    res["sandbox_ms"] = sandbox_ms(reps=5 if args.smoke else 30)
    res["flowlm"], m_scores = run_pool(mt, args.workers)
    res["code_flowlm"], c_scores = run_pool(ct, args.workers)
    # Same items for the baseline: evenly spread over the workload.
    step_m, step_c = max(1, len(mt) // peer_items), max(1, len(ct) // peer_items)
    res["peer"], pm = run_peer(mt[::step_m][:peer_items])
    res["code_peer"], pc = run_peer(ct[::step_c][:peer_items])
    res["ratio"] = res["flowlm"] / res["peer"]
    res["code_ratio"] = res["code_flowlm"] / res["code_peer"]
    res["math_correct_accepted"] = sum(m_scores[0::2]) / (len(mt) // 2)
    res["math_corrupt_rejected"] = 1 - sum(m_scores[1::2]) / (len(mt) // 2)
    res["code_pass"] = sum(c_scores) / len(ct)
    res["peer_agrees"] = pm == m_scores[::step_m][:peer_items] and pc == c_scores[::step_c][:peer_items]
    res["sandbox_info"] = info
    print(f"{'part':<8}{'flowlm pool (/s)':>18}{'fresh process (/s)':>20}{'ratio':>8}")
    print(f"{'math':<8}{res['flowlm']:>18.1f}{res['peer']:>20.2f}{res['ratio']:>8.1f}")
    print(f"{'code':<8}{res['code_flowlm']:>18.1f}{res['code_peer']:>20.2f}{res['code_ratio']:>8.1f}")
    print("sandboxed empty program (ms): " + ", ".join(f"{k} {v}" for k, v in res["sandbox_ms"].items()))
    print("RESULT " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
