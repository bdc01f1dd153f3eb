"""DPO throughput: flowlm's engine (`dpo` objective, cached reference log-probs) vs TRL's `DPOTrainer`, pairs/s.

Workload, identical on both sides: 64 preference pairs built from the built-in math tasks
(`flowlm.data.tasks.generate`, training split): prompt = the task's question as a user message,
chosen = its worked solution, rejected = the same solution with the final answer corrupted (its last
number moved by 1-9) on the last two lines, all in TRL's conversational preference format
(`{"prompt": [user], "chosen": [assistant], "rejected": [assistant]}`; 77-286 tokens per sequence,
126 on average, 27 % of them prompt);
one flowlm tokenizer and chat template; the tiny OLMo-3 preset with the same initial weights on both sides
(saved once with `flowlm.model.hf.save_pretrained`; flowlm `load_native`, TRL `Olmo3ForCausalLM`, SDPA);
sigmoid DPO loss with β = 0.1 on summed answer log-probabilities (flowlm
`{"name": "dpo", "loss_type": "dpo", "beta": 0.1}`, TRL `loss_type="sigmoid"`, `beta=0.1`); 8 pairs per
optimizer step (flowlm: each pair's prompt computed once for both answers, all 8 pairs in one flat row
without padding, `flowlm.model.tree`; TRL: 16 rows padded to the batch's longest);
`max_length` 512; fp32; AdamW lr 1e-6 (TRL's DPO default), betas (0.9, 0.999), no weight decay, linear
decay, clip 1.0; `torch.set_num_threads(2)`; no gradient checkpointing (TRL defaults `bf16` and
`gradient_checkpointing` to True; both set False here, as in peer-baselines.md §3c).

Two settings, each on both sides:
- (a) `precomputed`: reference log-probs computed once over the 64 pairs before training, that time
  excluded from pairs/s and reported separately (`*_precompute_s`). flowlm: `Trainer`, then
  `trainer.resume()`, then `objective.precompute_reference(dataset, cache_dir)` (reference = the initial
  policy; cache in a fresh directory, so it is computed, not read), then `fit()`. TRL:
  `precompute_ref_log_probs=True` (done inside `DPOTrainer.__init__`; timed by wrapping its
  `_precompute_ref_logps`, measurement only).
- (b) `reference`: the reference's cost counted. TRL: `precompute_ref_log_probs=False`, a frozen reference
  copy runs a forward every step (in the timed steps). flowlm always caches, so its precompute time is
  added, amortised over the pairs: pairs/s = timed pairs / (timed seconds + precompute seconds x timed
  pairs / 64), i.e. the rate of a one-epoch run over the 64 pairs. (b) for flowlm comes from the same
  runs as (a).
The headline `ratio` is setting (a); `ratio_reference` is (b). Each run is a fresh subprocess, systems
alternate within each round, `--warmup` untimed steps then `--steps` timed ones (wall time from the end of
the last warm-up step to the end of the last timed step, as in `sft_throughput.py`), medians over `--runs`.
Real tokens/s (non-padding positions of the 16 rows per step) are reported beside pairs/s.
`OMP_WAIT_POLICY=PASSIVE` as in the other benchmarks (the machine is shared).

    python benchmarks/dpo_throughput.py [--runs 3] [--steps 4] [--warmup 2] [--threads 2] [--profile] [--quick]

Needs the `bench` extra (trl, datasets, accelerate). `--quick` (alias `--smoke`): one run of each system,
2 pairs per step, 1 warm-up + 1 timed step, 8 pairs of at most 256 tokens: it checks the script runs; the
numbers mean nothing. `--profile`: one more flowlm run under `torch.profiler` (not part of the figures).

Ends with `RESULT {json}`: `flowlm`, `peer`, `ratio` (pairs/s, setting a), `flowlm_reference`,
`peer_reference`, `ratio_reference` (setting b), `unit`, `flowlm_precompute_s`, `trl_precompute_s`,
`trl_precomputed_incl_precompute` (TRL's (a) with its precompute amortised the same way), `<system>_tok_s`,
`runs`, the settings (`pairs_per_step`, `max_length`, `n_pairs`, `threads`, `omp_wait_policy`,
`versions`, `data`) and `quick`. Everything lives in one temporary directory, removed on success,
failure, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see generate_throughput.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from scratch import scratch_dir
from sft_throughput import (
    StepClock,
    build_base,
    child_setup,
    count_inputs,
    engine_config,
    flowlm_clock_callback,
    print_table,
    profile_trainer,
    spawn,
    trl_clock_callback,
    versions,
)

P, T = 8, 512  # pairs per step, max tokens per sequence
N_PAIRS = 64
TOK_BYTES = 1_000_000
LR = 1e-6  # TRL DPOConfig's default learning rate
BETA = 0.1


def quick_sizes() -> None:
    """`--quick`: 2 pairs per step, 8 pairs of at most 256 tokens (set in the parent and every run's process)."""
    global P, T, N_PAIRS, TOK_BYTES
    P, T, N_PAIRS, TOK_BYTES = 2, 256, 8, 300_000


# -- data ------------------------------------------------------------------------------------------------
def corrupt(solution: str, answer: str, rng: random.Random) -> str:
    """The solution with its final answer made wrong: the answer's last number moved by ±1..9 on the
    last two lines (where the answer is stated); a number-free answer is reversed."""
    nums = list(re.finditer(r"-?\d+", answer))
    if nums:
        m = nums[-1]
        wrong_num = int(m.group()) + rng.choice([-1, 1]) * rng.randint(1, 9)
        wrong = answer[:m.start()] + str(wrong_num) + answer[m.end():]
    else:
        wrong = answer[::-1] if answer[::-1] != answer else answer + "x"
    lines = solution.rstrip("\n").split("\n")
    head, tail = lines[:-2], lines[-2:]
    return "\n".join(head + [line.replace(answer, wrong) for line in tail])


def preference_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    from flowlm.data import tasks

    rng = random.Random(seed)
    rows = []
    for it in tasks.generate(seed + 3_000_017, n):
        rows.append({"prompt": [{"role": "user", "content": it["prompt"]}],
                     "chosen": [{"role": "assistant", "content": it["solution"]}],
                     "rejected": [{"role": "assistant", "content": corrupt(it["solution"], it["answer"], rng)}]})
    return rows


def build_data(d: Path) -> dict[str, Any]:
    """Tokenizer, checkpoint, the pairs as JSON (TRL's input) and flowlm's pair stores (not timed)."""
    from flowlm.data.pairs import PairDataset, tokenize_pairs

    tok, _ = build_base(d, TOK_BYTES)
    rows = preference_rows(N_PAIRS)
    assert all(r["chosen"] != r["rejected"] for r in rows)
    (d / "pairs.json").write_text(json.dumps(rows))
    tokenize_pairs(tok, rows, d / "pairs")
    ds = PairDataset(d / "pairs", max_len=T)
    lens = [len(ds[i][s][0]) for i in range(len(ds)) for s in ("chosen", "rejected")]
    return {"pairs": len(rows), "vocab": len(tok), "seq_tokens_mean": round(sum(lens) / len(lens), 1),
            "seq_tokens_max": max(lens), "seq_tokens_min": min(lens)}


# -- flowlm ----------------------------------------------------------------------------------------------
def pair_counts(batch: dict[str, torch.Tensor], pad_id: int) -> dict[str, int]:
    """Real (non-padding) tokens of one batch, and `slots`: the positions of the padded `[2P, T]` layout
    (what TRL computes; flowlm's objective packs the sequences and computes ~5 % padding instead)."""
    c, r = batch["chosen_input_ids"], batch["rejected_input_ids"]
    return {"pairs": int(c.shape[0]), "real": int((c != pad_id).sum() + (r != pad_id).sum()),
            "slots": int(2 * c.shape[0] * max(c.shape[1], r.shape[1]))}


def flowlm_trainer(d: Path, steps: int, callbacks: tuple = ()) -> tuple[Any, Any, Any, Any]:
    """`(trainer, objective, loader, dataset)`, the trainer resumed (fresh), the reference not yet computed."""
    from flowlm.data.loader import PackedLoader
    from flowlm.data.pairs import PairDataset
    from flowlm.model.hf import load_native
    from flowlm.train.engine import Trainer
    from flowlm.train.objectives import build_objective
    from flowlm.train.parallel import World, parallelize

    model, _ = load_native(d / "ckpt")
    world = World()
    model = parallelize(model, world, compile=False, bf16=False)
    dataset = PairDataset(d / "pairs", max_len=T, with_index=True)
    loader = PackedLoader(dataset, P, seed=0)
    objective = build_objective({"name": "dpo", "loss_type": "dpo", "beta": BETA})
    trainer = Trainer(model, objective, loader, engine_config(steps, T, P, LR),
                      Path(tempfile.mkdtemp(prefix="flowlm-dpo-")), world=world, callbacks=callbacks,
                      show_progress=False)
    trainer.resume()
    return trainer, objective, loader, dataset


def run_flowlm(d: Path, warmup: int, steps: int) -> dict[str, Any]:
    from flowlm.data.loader import PackedLoader

    clock = StepClock()
    total = warmup + steps + 1  # the final step also writes the end-of-run checkpoint: not timed
    trainer, objective, _, dataset = flowlm_trainer(d, total, (flowlm_clock_callback(clock),))
    twin = iter(PackedLoader(dataset, P, seed=0))  # deterministic: the trainer's very batches
    counts = [pair_counts(next(twin), dataset.pad_id) for _ in range(total)]
    t0 = time.perf_counter()
    objective.precompute_reference(dataset, tempfile.mkdtemp(prefix="dpo-cache-"))
    precompute = time.perf_counter() - t0
    trainer.fit()
    timed = counts[warmup:warmup + steps]
    return {"seconds": clock.window(warmup, steps), "precompute_s": precompute,
            **{k: sum(c[k] for c in timed) for k in timed[0]}}


def profile_flowlm(d: Path) -> None:
    trainer, objective, loader, dataset = flowlm_trainer(d, 10**6)
    objective.precompute_reference(dataset, tempfile.mkdtemp(prefix="dpo-cache-"))
    profile_trainer(trainer, loader)


# -- TRL -------------------------------------------------------------------------------------------------
def run_trl(d: Path, precompute: bool, warmup: int, steps: int) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import Olmo3ForCausalLM
    from trl import DPOConfig, DPOTrainer

    from flowlm.model.tokenizer import load_tokenizer

    spent = {"precompute_s": 0.0}
    inner = DPOTrainer._precompute_ref_logps

    def timed_precompute(self: Any, *a: Any, **kw: Any) -> Any:  # measurement only
        t0 = time.perf_counter()
        out = inner(self, *a, **kw)
        spent["precompute_s"] += time.perf_counter() - t0
        return out

    DPOTrainer._precompute_ref_logps = timed_precompute
    tok = load_tokenizer(d / "tok")
    model = Olmo3ForCausalLM.from_pretrained(str(d / "ckpt"), dtype=torch.float32, attn_implementation="sdpa")
    ds = Dataset.from_list(json.loads((d / "pairs.json").read_text()))
    clock, counts = StepClock(), []
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-dpo-"), per_device_train_batch_size=P, max_length=T,
        beta=BETA, loss_type="sigmoid", precompute_ref_log_probs=precompute, max_steps=warmup + steps,
        learning_rate=LR, bf16=False, gradient_checkpointing=False, report_to=[], save_strategy="no",
        use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         callbacks=[trl_clock_callback(clock)])
    pad = tok.pad_token_id

    def count(b: dict[str, Any]) -> dict[str, int]:
        ids = b["input_ids"]
        real = b["attention_mask"].sum() if "attention_mask" in b else (ids != pad).sum()
        return {"pairs": int(ids.shape[0]) // 2, "real": int(real), "slots": int(ids.numel())}

    count_inputs(trainer, counts, count)
    trainer.train()
    timed = counts[warmup:warmup + steps]
    return {"seconds": clock.window(warmup, steps), "precompute_s": spent["precompute_s"],
            **{k: sum(c[k] for c in timed) for k in timed[0]},
            "settings": {"precompute_ref_log_probs": precompute, "ref_model": "none (precomputed)" if precompute
                         else type(trainer.ref_model).__name__ + " (frozen copy, per-step forward)",
                         "loss_type": list(args.loss_type) if not isinstance(args.loss_type, str) else args.loss_type,
                         "beta": args.beta, "bf16": args.bf16, "activation_checkpointing": bool(
                             getattr(args, "activation_checkpointing", args.gradient_checkpointing)),
                         "padding_free": args.padding_free, "max_length": args.max_length,
                         "precompute_ref_batch_size": args.precompute_ref_batch_size or P,
                         "optim": str(args.optim), "lr_scheduler": str(args.lr_scheduler_type)}}


SYSTEMS = ("flowlm", "trl_precomputed", "trl_reference")


def run_one(system: str, args: argparse.Namespace) -> dict[str, Any]:
    child_setup(args)
    if system == "flowlm":
        return run_flowlm(args.data, args.warmup, args.steps)
    if system == "flowlm_profile":
        profile_flowlm(args.data)
        return {}
    if system in ("trl_precomputed", "trl_reference"):
        return run_trl(args.data, system == "trl_precomputed", args.warmup, args.steps)
    raise SystemExit(f"unknown system {system!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="also profile flowlm's step (torch.profiler)")
    ap.add_argument("--quick", "--smoke", action="store_true", help="1 run, 1+1 steps, tiny sizes: checks it runs")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        quick_sizes()
        if not args.one:
            args.runs, args.steps, args.warmup = 1, 1, 1
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    vers = versions()
    print(f"versions: {json.dumps(vers)}; threads {args.threads}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SYSTEMS}
    with scratch_dir("dpobench-") as d:
        t0 = time.perf_counter()
        data = build_data(d)
        print(f"data: {json.dumps(data)} ({time.perf_counter() - t0:.0f} s to build)", flush=True)
        for r in range(args.runs):
            for s in SYSTEMS:
                res = spawn(__file__, s, d, args)
                runs[s].append(res)
                pre = f", precompute {res['precompute_s']:.1f} s" if res["precompute_s"] else ""
                print(f"run {r + 1} {s:<16} {res['pairs'] / res['seconds']:6.2f} pairs/s  {res['real'] / res['seconds']:8.1f} "
                      f"real tok/s  ({res['pairs']} pairs in {res['seconds']:.1f} s{pre})", flush=True)
        if args.profile:
            spawn(__file__, "flowlm_profile", d, args)

    def rates(s: str, amortise: bool = False) -> list[float]:
        return [x["pairs"] / (x["seconds"] + (x["precompute_s"] * x["pairs"] / N_PAIRS if amortise else 0.0))
                for x in runs[s]]

    print(f"\n{P} pairs per step, max_length {T}, {N_PAIRS} pairs, fp32, {args.threads} threads, {args.warmup} "
          f"warm-up + {args.steps} timed steps per run, {args.runs} runs")
    table = {"flowlm (a)": rates("flowlm"), "trl (a)": rates("trl_precomputed"),
             "flowlm (b)": rates("flowlm", amortise=True), "trl (b)": rates("trl_reference"),
             "trl (a)+pre": rates("trl_precomputed", amortise=True)}
    med = print_table(table, "pairs/s", "(a) reference precomputed, excluded; (b) reference cost included")
    pre = {s: statistics.median(x["precompute_s"] for x in runs[s]) for s in ("flowlm", "trl_precomputed")}
    tok_s = {s: statistics.median(x["real"] / x["seconds"] for x in runs[s]) for s in SYSTEMS}
    print(f"reference precompute over {N_PAIRS} pairs (median): flowlm {pre['flowlm']:.2f} s, "
          f"TRL {pre['trl_precomputed']:.2f} s")
    print(f"(a) flowlm / TRL = {med['flowlm (a)'] / med['trl (a)']:.2f}x; "
          f"(b) flowlm / TRL = {med['flowlm (b)'] / med['trl (b)']:.2f}x")
    configs = {s: runs[s][0].get("settings") for s in SYSTEMS if s != "flowlm"}
    for s, c in configs.items():
        print(f"{s}: {json.dumps(c)}")
    result = {
        "flowlm": round(med["flowlm (a)"], 3), "peer": round(med["trl (a)"], 3),
        "ratio": round(med["flowlm (a)"] / med["trl (a)"], 3),
        "flowlm_reference": round(med["flowlm (b)"], 3), "peer_reference": round(med["trl (b)"], 3),
        "ratio_reference": round(med["flowlm (b)"] / med["trl (b)"], 3), "unit": "pairs/s",
        "flowlm_precompute_s": round(pre["flowlm"], 3), "trl_precompute_s": round(pre["trl_precomputed"], 3),
        "trl_precomputed_incl_precompute": round(med["trl (a)+pre"], 3),
        **{f"{s}_tok_s": round(v, 1) for s, v in tok_s.items()},
        "runs": {s: [{k: v for k, v in x.items() if k != "settings"} for x in runs[s]] for s in SYSTEMS},
        "pairs_per_step": P, "max_length": T, "n_pairs": N_PAIRS, "warmup": args.warmup, "steps": args.steps,
        "threads": args.threads, "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "lr": LR, "beta": BETA,
        "trl_configs": configs, "versions": vers, "data": data, "quick": args.quick,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
