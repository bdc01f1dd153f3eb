"""Tool calls beside decoding: `ToolEngine` with its tool threads against the same rollouts with the calls run
inline, inside the engine's step.

A micro OLMo-3 (hidden 64, 2 layers) first learns one trajectory by heart: to the prompt `question 0`
(the `python` tool listed in the system turn) it calls `python` with `print(48213 * 9127)`, reads the answer
and replies. Then both sides sample `--requests` requests of `--n` samples each of that prompt (temperature
0.5, seeded, the same for both), through the native engine wrapped by `flowlm.tools.engine.ToolEngine`
with the real `python` tool (flowlm's sandbox: bubblewrap, seccomp, Landlock, rlimits), `workers=0` and
`workers=--workers`, in alternating rounds. Every sample makes one call, so the inline side stops every
sequence for each call in turn, and the threaded side runs the calls together while the engine decodes.
Also measured alone: the latency of one sandboxed call.

    python benchmarks/tool_rollouts.py [--requests 4] [--n 8] [--workers 8] [--rounds 3] [--smoke]

`--smoke` runs 1 request of 2 samples, one round (seconds; the numbers mean nothing). Ends with
`RESULT {json}`; keys: `inline_s`, `threaded_s` (medians over rounds, seconds for all samples), `ratio`
(inline over threaded: > 1 = the threads are faster), `calls` (calls run per side and round), `samples`,
`call_ms` (one sandboxed call alone), `workers`, `rounds`, `threads`, `smoke`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests.tools.memorize: the micro model that learns a trajectory by heart

from flowlm.generate.engine import Engine, GenerateConfig  # noqa: E402
from flowlm.generate.params import SamplingParams  # noqa: E402
from flowlm.generate.prompts import to_prompt_ids  # noqa: E402
from flowlm.model.olmo3 import Olmo3  # noqa: E402
from flowlm.model.tokenizer import load_tokenizer, train_tokenizer, turn_end_ids  # noqa: E402
from flowlm.tools.builtin import PYTHON, check_available  # noqa: E402
from flowlm.tools.engine import ToolEngine, fill_tool_turn, tool_turn_text  # noqa: E402
from tests.tools.memorize import memorize  # noqa: E402

CALL = '<tool_call>\n{"name": "python", "arguments": {"code": "print(48213 * 9127)"}}\n</tool_call>'
ANSWER = "<think>\nPython printed 440040051.\n</think>\n\nThe answer is 440040051."


def caller(tok) -> tuple[Olmo3, list[int]]:
    """The micro model with the trajectory learnt (loss on its own turns, not the tool's), and the prompt."""
    prompt = to_prompt_ids([{"role": "user", "content": "question 0"}], tok, tools=[PYTHON.schema])
    end = list(turn_end_ids(tok))
    reply = tok.encode(CALL, add_special_tokens=False) + end
    tool = tok.encode(fill_tool_turn(tool_turn_text(tok, ["python"]), ["440040051"]), add_special_tokens=False)
    answer = tok.encode(ANSWER, add_special_tokens=False) + end
    return memorize(len(tok), [(prompt, False), (reply, True), (tool, False), (answer, True)]), prompt


def run(model: Olmo3, tok, prompt: list[int], requests: int, n: int, workers: int) -> tuple[float, int]:
    engine = ToolEngine(Engine(model, tok, GenerateConfig(max_slots=max(64, requests * n))), {"python": PYTHON},
                        max_calls=1, workers=workers)
    params = [SamplingParams(n=n, temperature=0.5, max_new_tokens=150, seed=100 * i) for i in range(requests)]
    t0 = time.perf_counter()
    results = engine.generate([prompt] * requests, params)
    elapsed = time.perf_counter() - t0
    engine.close()
    return elapsed, sum(c.tool_calls for r in results for c in r.completions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--n", type=int, default=8, help="samples per request")
    ap.add_argument("--workers", type=int, default=8, help="tool threads of the threaded side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.requests, args.n, args.rounds = 1, 2, 1
    torch.set_num_threads(args.threads)
    check_available({"python": PYTHON})
    with tempfile.TemporaryDirectory() as tmp:
        train_tokenizer(["The answer is 42. Python prints numbers when the tools compute things exactly."] * 50, 400,
                        Path(tmp) / "tok")
        tok = load_tokenizer(Path(tmp) / "tok")
    model, prompt = caller(tok)
    t0 = time.perf_counter()
    for _ in range(5):
        PYTHON.run({"code": "print(48213 * 9127)"})
    call_ms = (time.perf_counter() - t0) / 5 * 1000
    times: dict[str, list[float]] = {"inline": [], "threaded": []}
    calls: dict[str, list[int]] = {"inline": [], "threaded": []}
    for r in range(args.rounds):
        order = [("inline", 0), ("threaded", args.workers)]
        for name, workers in order if r % 2 == 0 else order[::-1]:
            s, c = run(model, tok, prompt, args.requests, args.n, workers)
            times[name].append(s)
            calls[name].append(c)
            print(f"round {r + 1} {name:8s} {s:6.2f} s  {c} calls", flush=True)
    inline, threaded = statistics.median(times["inline"]), statistics.median(times["threaded"])
    print(f"{args.requests * args.n} samples, one sandboxed call {call_ms:.0f} ms: inline {inline:.2f} s, "
          f"{args.workers} tool threads {threaded:.2f} s, {inline / threaded:.2f}x")
    print("RESULT " + json.dumps({"inline_s": round(inline, 3), "threaded_s": round(threaded, 3),
                                  "ratio": round(inline / threaded, 3), "calls": calls,
                                  "samples": args.requests * args.n, "call_ms": round(call_ms, 1),
                                  "workers": args.workers, "rounds": args.rounds, "threads": args.threads,
                                  "smoke": args.smoke}))


if __name__ == "__main__":
    main()
