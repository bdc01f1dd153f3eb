"""SFT show: flowlm's SFT against a plain `transformers` SFT loop, from one checkpoint, in the same wall time.

The #14 yardstick: "a plain transformers SFT loop, tried as a newcomer would write it", started from the
default flow's `long_context` checkpoint, trained on the built-in `sft_examples` in thinking mode with
assistant-only loss in padded batches of 16, then held-out pass@1 through `flowlm eval`. This script runs
both sides on one machine, one after the other, and evaluates both (and the starting checkpoint) the same
way:

1. data: `flowlm.data.builtin.sft_examples(0, --examples, no_think_fraction=0)` as a chat JSONL file,
   the same rows for both sides;
2. flowlm: `flowlm train --objective sft --init CKPT --data FILE` with this script's SFT settings
   (`FLOWLM_SETTINGS`, overridable by trailing `key=value` overrides), timed from process start to exit
   (tokenization, packing, training, checkpoint write, and the stage's closing BPB eval on 2 items);
3. peer: the newcomer's loop in a fresh process (`AutoModelForCausalLM`, `AdamW(lr=--peer-lr)`, no
   schedule, batches of 16 conversations right-padded to the longest, labels -100 outside the assistant
   mask of `flowlm.data.chat.render_chat_example`), training until the flowlm side's wall time is used
   up (checked before each step, so it stops within one step of it), then `save_pretrained`;
4. `flowlm eval --model M --suite builtin --max-items --temperature 0` (greedy) for the start, flowlm
   and the peer: pass@1, the share of answers whose think block never closes, per-task solved counts.

Both sides run with 2 threads (`--threads`). A flowlm run that exits non-zero fails the script.

    python benchmarks/sft_show.py --init CKPT [--examples 15000] [--items 200] [--peer-lr 1e-4]
                                  [--threads 2] [--quick] [stages.sft.KEY=VALUE ...]

`--init` is the checkpoint both sides start from: `runs/tiny/long_context/checkpoints/step_0000012` after
`flowlm run`. Without it the script starts from a randomly initialised tiny model with a tokenizer trained
here (the smoke case; such numbers mean nothing). `--quick` (alias `--smoke`): 60 examples, a few steps,
a 5 s peer budget, 10 eval items of at most 32 new tokens: it checks the script runs; the numbers mean
nothing.

Prints a table, then `RESULT {json}`: `flowlm`, `peer` (greedy pass@1), `ratio` (null when the peer scores
0), `base`, `unit`, `<side>_seconds`, `<side>_steps`, `<side>_tokens` (flowlm: packed row slots; peer: real
tokens), `<side>_unclosed_think`, `<side>_by_task`, the settings, `init` and `quick`. Everything lives in one
temporary directory, removed however the script ends.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see generate_throughput.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from scratch import scratch_dir

# flowlm's side: packed 512-token rows, 4 per step, cosine with warm-up (see docs/post.md, "SFT show").
FLOWLM_SETTINGS = {
    "stages.sft.seq_len": "512",
    "stages.sft.batch_size": "4",
    "stages.sft.steps": "380",
    "stages.sft.optim.lr": "3e-4",
    "stages.sft.schedule.warmup_steps": "10",
    "stages.sft.checkpoint_every": "100000",
    # the stage's closing BPB eval at its smallest: its defaults took ~60 s of flowlm's timed run, which
    # the peer (no eval) then spent training (so until 2026-12-07)
    "eval.max_items": "2", "eval.heldout_docs": "1", "eval.tasks": "[prose]",
}
QUICK_SETTINGS = {"stages.sft.seq_len": "256", "stages.sft.batch_size": "2", "stages.sft.steps": "3",
                  "stages.sft.schedule.warmup_steps": "1"}
PEER_BATCH = 16


def write_data(path: Path, n: int) -> None:
    from flowlm.data import builtin

    with path.open("w") as f:
        for row in builtin.sft_examples(0, n, no_think_fraction=0):
            f.write(json.dumps({"messages": row["messages"]}) + "\n")


def random_checkpoint(out: Path) -> Path:
    """A randomly initialised tiny model with a tokenizer trained on built-in text (the smoke start)."""
    import torch

    from flowlm.data.builtin import pretrain_docs
    from flowlm.model.config import ModelConfig
    from flowlm.model.hf import save_pretrained
    from flowlm.model.olmo3 import Olmo3
    from flowlm.model.tokenizer import train_tokenizer

    tok = train_tokenizer((d["text"] for d in pretrain_docs(0, max_bytes=100_000)), 8192, out / "tok")
    torch.manual_seed(0)
    save_pretrained(Olmo3(ModelConfig.preset("tiny", vocab_size=8192)), tok, out / "ckpt")
    return out / "ckpt"


def peer_main(init: str, data: str, out: str, lr: float, budget: float, threads: int) -> None:
    """The newcomer's loop (runs in its own process; prints one JSON line)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flowlm.data.chat import render_chat_example

    start = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(init)
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    model.train()
    rows = [json.loads(line) for line in open(data)]
    examples = [render_chat_example(tok, r) for r in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    steps = tokens = 0
    while time.perf_counter() - start < budget:
        first = (steps * PEER_BATCH) % len(examples)
        batch = examples[first:first + PEER_BATCH]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), -100)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for k, (seq, mask) in enumerate(batch):
            ids[k, :len(seq)] = torch.tensor(seq)
            attn[k, :len(seq)] = 1
            labels[k, :len(seq)] = torch.tensor([t if m else -100 for t, m in zip(seq, mask)])
            tokens += len(seq)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        steps += 1
    model.save_pretrained(out)
    tok.save_pretrained(out)
    print(json.dumps({"steps": steps, "tokens": tokens, "seconds": time.perf_counter() - start}))


def flowlm_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "flowlm.cli", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"flowlm {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def evaluate(model: Path | str, out: Path, items: int, env: dict[str, str],
             max_new_tokens: int | None = None) -> dict[str, Any]:
    limit = ("--max-new-tokens", str(max_new_tokens)) if max_new_tokens else ()
    flowlm_cli("eval", "--model", str(model), "--suite", "builtin", "--max-items", str(items),
               "--temperature", "0", "--out", str(out), "--no-progress", *limit, env=env)
    doc = json.loads(out.read_text())
    res = doc["results"]["builtin"]
    solved, seen = Counter(), Counter()
    for item in doc["items"]["builtin"]:
        task = item["id"].split("-")[0]
        seen[task] += 1
        solved[task] += item["samples"][0]["score"] > 0
    return {"pass@1": res["pass@1"], "unclosed_think": res["unclosed_think"],
            "by_task": {t: f"{solved[t]}/{seen[t]}" for t in sorted(seen)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", help="the starting checkpoint (the flow's long_context); default: random init")
    ap.add_argument("--examples", type=int, default=15000)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--peer-lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", "--smoke", action="store_true")
    ap.add_argument("--peer", nargs=3, metavar=("DATA", "OUT", "BUDGET"), help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="flowlm SFT overrides, e.g. stages.sft.optim.lr=5e-4")
    args = ap.parse_args()
    if args.peer:
        data, out, budget = args.peer
        return peer_main(args.init, data, out, args.peer_lr, float(budget), args.threads)

    settings = dict(FLOWLM_SETTINGS, **(QUICK_SETTINGS if args.quick else {}))
    for kv in args.overrides:
        key, sep, value = kv.partition("=")
        if not sep:
            sys.exit(f"override {kv!r}: expected key=value")
        settings[key] = value
    items = 10 if args.quick else args.items
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), FLOWLM_THREADS=str(args.threads))
    with scratch_dir("sftshow-") as tmp:
        args.init = args.init or str(random_checkpoint(tmp / "init"))
        data = tmp / "sft.jsonl"
        write_data(data, 60 if args.quick else args.examples)

        start = time.perf_counter()
        flowlm_cli("train", "--objective", "sft", "--init", args.init, "--data", str(data), "--run-dir",
                   str(tmp / "flowlm"), "--no-progress", *(f"{k}={v}" for k, v in settings.items()), env=env)
        flowlm_s = time.perf_counter() - start
        ckpt = sorted((tmp / "flowlm" / "sft" / "checkpoints").glob("step_*"))[-1]
        metrics = [json.loads(line) for line in (tmp / "flowlm" / "sft" / "metrics.jsonl").open()]
        flowlm_tokens = sum(m.get("tokens", 0) for m in metrics if "loss" in m)

        budget = min(flowlm_s, 5.0) if args.quick else flowlm_s
        proc = subprocess.run([sys.executable, __file__, "--init", args.init, "--peer-lr", str(args.peer_lr),
                               "--threads", str(args.threads), "--peer", str(data), str(tmp / "peer"), str(budget)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"peer loop failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        peer = json.loads(proc.stdout.strip().splitlines()[-1])

        # --smoke: short answers (a random model never stops, and the smoke's numbers mean nothing)
        scores = {name: evaluate(model, tmp / f"{name}.json", items, env, 32 if args.quick else None)
                  for name, model in (("base", args.init), ("flowlm", ckpt), ("peer", tmp / "peer"))}
    result: dict[str, Any] = {
        "flowlm": scores["flowlm"]["pass@1"], "peer": scores["peer"]["pass@1"],
        "ratio": scores["flowlm"]["pass@1"] / scores["peer"]["pass@1"] if scores["peer"]["pass@1"] else None,
        "base": scores["base"]["pass@1"], "unit": "greedy pass@1, built-in held-out suite",
        "flowlm_seconds": round(flowlm_s, 1), "peer_seconds": round(peer["seconds"], 1),
        "flowlm_steps": int(settings["stages.sft.steps"]), "peer_steps": peer["steps"],
        "flowlm_tokens": flowlm_tokens, "peer_tokens": peer["tokens"],
        **{f"{k}_unclosed_think": v["unclosed_think"] for k, v in scores.items()},
        **{f"{k}_by_task": v["by_task"] for k, v in scores.items()},
        "settings": settings, "peer_lr": args.peer_lr, "peer_batch": PEER_BATCH, "items": items,
        "examples": args.examples, "threads": args.threads, "init": args.init, "quick": args.quick,
    }
    print(f"{'':8} {'pass@1':>7} {'open think':>10} {'steps':>6} {'seconds':>8}  solved by task")
    for side in ("base", "flowlm", "peer"):
        steps = result.get(f"{side}_steps", "")
        secs = result.get(f"{side}_seconds", "")
        print(f"{side:8} {scores[side]['pass@1']:7.3f} {scores[side]['unclosed_think']:10.3f} {steps!s:>6} "
              f"{secs!s:>8}  {scores[side]['by_task']}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
