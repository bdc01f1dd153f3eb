"""RL (GRPO) throughput: flowlm's `rl` path (sync and async) vs TRL's `GRPOTrainer`, and where a step's time goes.

Workload, identical on every side (peer-baselines.md row 3d's geometry): the tiny OLMo-3 preset (10.5 M
parameters) with the same seeded initial weights and one flowlm tokenizer (byte-level BPE, 8,192
entries; `sft_throughput.build_base`); prompts `flowlm.post.procedural.builtin_rows(200)` (built-in task
prompts: arithmetic, word problems, sorting) rendered with the tokenizer's chat template (thinking on);
16 completions per optimizer step = 2 prompts x 8 samples, at most 64 new tokens, temperature 1; reward =
the same flowlm verifier on both sides (rows routed by their `dataset` column: flowlm calls
`flowlm.verify` directly, TRL gets `flowlm.verify.make_reward_fn()`); GRPO with no KL (beta 0), clip
0.2 / 0.272, token-level loss (TRL `dapo`), one optimizer step per generation batch; fp32; AdamW
lr 1e-6 (TRL's GRPO default), betas (0.9, 0.999), no weight decay, linear decay, grad-norm clip 1.0;
`torch.set_num_threads(--threads)` (2). No zero-std filtering or active sampling on the flowlm side
(TRL has neither, and a random model's groups are all zero-reward: filtering would resample forever).

Systems, each run in a fresh process, alternating within every round, medians over `--runs` rounds:
- `flowlm_sync`: `RolloutSource` (mode sync: the engine generates with continuous batching, then the
  verifiers score, then the learner steps) -> `Trainer` with objective `grpo`, as stage kind `rl` builds them;
- `flowlm_async`: the same with `mode: async`, `async_steps` (`--async-steps`, 2) and `max_slots`
  (`--async-slots`, 32): a rollout thread generates the next two steps' groups (32 sequences decoded
  together) during the learner's step, weights are pushed as inflight updates (`flowlm.rl.actor`);
- `flowlm_ray` (only with `--ray`): the same as async with `mode: ray` on a local Ray cluster started by
  the run: one rollout actor process (`rollout_worker_cpus: 1`, its own engine, weights through the object
  store), verification in the learner's process (`num_reward_workers: 0`); `ray_vs_async` compares it;
- `trl`: `GRPOConfig(per_device_train_batch_size=16, num_generations=8, max_completion_length=64,
  bf16=False, gradient_checkpointing=False, epsilon_high=0.272, beta=0)`, HF `generate` (TRL's default
  path without vLLM), `chat_template_kwargs={"enable_thinking": True}` so its prompt tokens equal flowlm's.

Figures: steps/s over the timed steps (wall time from the end of the last warm-up step to the end of the
last timed step: generation, reward, learner, logging; flowlm's final checkpoint is after the window) and
generated tokens/s (completion tokens of the trained groups / the same seconds). (a) `ratio`: flowlm
async / TRL steps/s (target >= 3x), `ratio_sync`: flowlm sync / TRL; (b) `async_vs_sync`: flowlm async /
sync steps/s (target >= 1.5x on CPU); (c) `breakdown`: median seconds per step (and share of the step)
of generation, reward, learner (forward, backward, optimizer: the trainer's step minus getting the batch),
weight sync, idle (the learner waiting for its batch: in sync mode all of generation, reward and weight
sync, so `idle` overlaps them) and other (between steps: metrics, logging), for each system; in async
mode generation and reward run beside the learner (their seconds are busy time of the rollout and verify
threads, not on the learner's path) and `idle` is only the learner's wait. For TRL, generation is its `_generate` and
reward its `_calculate_rewards` (wrapped to time them; the steps are unchanged).

    python benchmarks/rl_throughput.py [--runs 3] [--steps 4] [--warmup 2] [--threads 2] [--async-steps 2]
                                       [--async-slots 32] [--ray] [--profile] [--smoke]

Needs the `bench` extra (trl, datasets, accelerate). `--smoke` (alias `--quick`): one run of each system, 1
warm-up + 1 timed step of 16 new tokens: it checks the script runs; the numbers mean nothing. `--profile`:
one more flowlm sync run under `torch.profiler` (top operators by self CPU time), not part of the figures.

Ends with `RESULT {json}`: `flowlm` (async steps/s), `peer` (TRL steps/s), `ratio`, `unit`, `flowlm_sync`,
`ratio_sync`, `async_vs_sync`, `<system>_steps_s`, `<system>_gen_tok_s`, `tok_ratio` (flowlm async / TRL
generated tokens/s), `breakdown`, `ratio_rounds` and `async_vs_sync_rounds` (the ratios within each
round), `runs`, `trl_config` (as the TRL run reported it), the settings (`prompts_per_step`, `group_size`,
`max_new_tokens`, `async_steps`, `async_slots`, `warmup`, `steps`, `threads`, `omp_wait_policy`, `lr`,
`versions`, `data`) and `quick`; with `--ray` also `flowlm_ray_steps_s`, `flowlm_ray_gen_tok_s` and
`ray_vs_async` (and `flowlm_ray` in `breakdown` and `runs`). Everything lives in one scratch directory, removed on success, failure,
Ctrl-C and SIGTERM.
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
    engine_config,
    flowlm_clock_callback,
    print_table,
    spawn,
    trl_clock_callback,
    versions,
)

PROMPTS, GROUP, NEW_TOKENS, N_ROWS = 2, 8, 64, 200
TOK_BYTES = 1_000_000
LR = 1e-6  # TRL GRPOConfig's default learning rate
CLIP_HIGH = 0.272  # OLMo 3 (flowlm's default); TRL's epsilon_high is set to match
SEQ = 512  # prompt + completion tokens at most (the longest built-in prompt is far shorter)
SYSTEMS = ("flowlm_sync", "flowlm_async", "trl")
PARTS = ("generation", "reward", "learner", "weight_sync", "idle", "other")


def quick_sizes() -> None:
    """`--smoke`: 16 new tokens, a smaller tokenizer corpus (set in the parent and in every run's process)."""
    global NEW_TOKENS, TOK_BYTES, N_ROWS
    NEW_TOKENS, TOK_BYTES, N_ROWS = 16, 300_000, 40


# -- data ------------------------------------------------------------------------------------------------
def build_data(d: Path) -> dict[str, Any]:
    """Tokenizer, checkpoint and the prompt rows (not timed); checks both sides see the same prompt tokens."""
    from flowlm.model.tokenizer import render_chat
    from flowlm.post.procedural import builtin_rows

    tok, _ = build_base(d, TOK_BYTES)
    rows = builtin_rows(N_ROWS, 0)
    (d / "prompts.json").write_text(json.dumps(rows))
    ours = [render_chat(tok, r["messages"], add_generation_prompt=True, enable_thinking=True)[0] for r in rows]
    theirs = tok.apply_chat_template(rows[0]["messages"], add_generation_prompt=True, tokenize=True,
                                     return_dict=True, enable_thinking=True)["input_ids"]
    if list(theirs) != list(ours[0]):
        raise SystemExit("TRL's chat-template rendering differs from flowlm's: the prompts would not match")
    return {"prompt_rows": len(rows), "mean_prompt_tokens": round(statistics.mean(len(x) for x in ours), 1),
            "tasks": sorted({r["task"] for r in rows}), "vocab": len(tok)}


# -- flowlm ----------------------------------------------------------------------------------------------
def flowlm_setup(d: Path, mode: str, total: int, args: argparse.Namespace, callbacks: tuple = ()) -> tuple[Any, Any]:
    """`(trainer, source)` as stage kind `rl` builds them (one process, fp32)."""
    from flowlm.model.hf import load_native
    from flowlm.model.tokenizer import load_tokenizer
    from flowlm.rl.source import RolloutConfig, RolloutSource
    from flowlm.train.engine import Trainer
    from flowlm.train.objectives import build_objective
    from flowlm.train.parallel import World, parallelize

    model, _ = load_native(d / "ckpt")
    world = World()
    model = parallelize(model, world, compile=False, bf16=False)
    extra: dict[str, Any] = {}
    if mode in ("async", "ray"):
        extra = {"mode": mode, "async_steps": args.async_steps, "max_slots": args.async_slots}
    if mode == "ray":  # one rollout actor process on its own core; rewards in this process
        extra |= {"num_rollout_workers": 1, "rollout_worker_cpus": 1, "num_reward_workers": 0}
    cfg = RolloutConfig(prompts_per_step=PROMPTS, group_size=GROUP, max_new_tokens=NEW_TOKENS, filter_zero_std=False,
                        active_sampling=False, **extra)
    source = RolloutSource(json.loads((d / "prompts.json").read_text()), load_tokenizer(d / "tok"), cfg, seed=0,
                           max_len=SEQ)
    source.bind(model)
    trainer = Trainer(model, build_objective({"name": "grpo", "clip_high": CLIP_HIGH}), source,
                      engine_config(total, SEQ, PROMPTS * GROUP, LR), Path(tempfile.mkdtemp(prefix="flowlm-rl-")),
                      world=world, callbacks=callbacks, show_progress=False)
    return trainer, source


def run_flowlm(d: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    from flowlm.train.engine import Callback

    clock, recs = StepClock(), []

    class Keep(Callback):
        def on_step_end(self, trainer: Any, step: int, record: dict[str, Any]) -> None:
            recs.append(record)

    total = args.warmup + args.steps + 1  # the final step also writes the end-of-run checkpoint: not timed
    trainer, source = flowlm_setup(d, mode, total, args, (flowlm_clock_callback(clock), Keep()))
    try:
        trainer.fit()
    finally:
        source.close()
    timed = recs[args.warmup:args.warmup + args.steps]
    seconds = clock.window(args.warmup, args.steps)
    def mean(key: str) -> float:
        return sum(float(r.get(key, 0.0)) for r in timed) / len(timed)

    # the trainer's step_time includes getting the batch (time_batch_s: generation, reward, weight sync and
    # collation in sync mode; waiting, weight sync and collation in async mode)
    parts = {"generation": mean("time_generate_s"), "reward": mean("time_verify_s"),
             "learner": mean("step_time") - mean("time_batch_s"), "weight_sync": mean("time_sync_s"),
             "idle": mean("time_wait_s") if mode in ("async", "ray") else mean("time_batch_s")}
    parts["other"] = max(0.0, seconds / len(timed) - mean("step_time"))  # metrics, logging between steps
    return {"seconds": seconds, "steps": len(timed),
            "gen_tokens": int(sum(round(r["completion_len"] * r["completions"]) for r in timed)),
            "parts": parts, "policy_lag": [r.get("policy_lag") for r in timed],
            "stale_dropped": sum(r.get("stale_dropped", 0) for r in timed),
            "idle_share": [r.get("learner_idle_share") for r in timed]}


def profile_flowlm(d: Path, args: argparse.Namespace) -> None:
    """Top operators by self CPU time over 2 whole sync RL steps (generation, reward, learner) after 1 warm-up."""
    from torch.profiler import ProfilerActivity, profile

    trainer, source = flowlm_setup(d, "sync", 10**6, args)
    batches = iter(source)
    trainer.train_step(next(batches))
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            trainer.train_step(next(batches))
    print(f"profile: {(time.perf_counter() - t0) / 2 * 1e3:.0f} ms wall per RL step (under the profiler)")
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    for e in events[:25]:
        print(f"{e.self_cpu_time_total / 2e3:9.1f} ms {e.self_cpu_time_total / total:6.1%}  x{e.count // 2:<6} "
              f"{e.key[:90]}")
    source.close()


# -- TRL -------------------------------------------------------------------------------------------------
def timed_method(obj: Any, name: str, acc: dict[str, float], key: str) -> None:
    """Add the seconds of every call of `obj.name` to `acc[key]` (measurement only; the call is unchanged)."""
    inner = getattr(obj, name)

    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0

    setattr(obj, name, wrapper)


def run_trl(d: Path, args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import Olmo3ForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from flowlm.model.tokenizer import load_tokenizer
    from flowlm.verify import make_reward_fn

    tok = load_tokenizer(d / "tok")
    model = Olmo3ForCausalLM.from_pretrained(str(d / "ckpt"), dtype=torch.float32, attn_implementation="sdpa")
    rows = json.loads((d / "prompts.json").read_text())
    ds = Dataset.from_list([{"prompt": r["messages"], "dataset": r["dataset"], "ground_truth": r["ground_truth"]}
                            for r in rows])
    reward = make_reward_fn()
    gen_tokens: list[int] = []

    def counted_reward(prompts: Any = None, completions: Any = None, completion_ids: Any = None, **kw: Any) -> Any:
        gen_tokens.append(sum(len(ids) for ids in completion_ids))
        return reward(prompts=prompts, completions=completions, **kw)

    counted_reward.__name__ = reward.__name__
    total = args.warmup + args.steps
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-grpo-"), per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP, max_completion_length=NEW_TOKENS, max_steps=total, learning_rate=LR, beta=0.0,
        epsilon_high=CLIP_HIGH, temperature=1.0, bf16=False, gradient_checkpointing=False, use_cpu=True,
        report_to=[], save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True, dataloader_num_workers=0,
        chat_template_kwargs={"enable_thinking": True})
    clock, acc, parts = StepClock(), {}, []

    class Split(TrainerCallback):
        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            parts.append(dict(acc))
            acc.clear()

    trainer = GRPOTrainer(model=model, reward_funcs=counted_reward, args=config, train_dataset=ds,
                          processing_class=tok, callbacks=[trl_clock_callback(clock), Split()])
    timed_method(trainer, "_generate", acc, "generation")
    timed_method(trainer, "_calculate_rewards", acc, "reward")
    trainer.train()
    seconds = clock.window(args.warmup, args.steps)
    timed = parts[args.warmup:total]
    per_step = seconds / args.steps
    split = {k: sum(p.get(k, 0.0) for p in timed) / len(timed) for k in ("generation", "reward")}
    split["learner"] = max(0.0, per_step - split["generation"] - split["reward"])  # everything else of the step
    split.update({"weight_sync": 0.0, "idle": split["generation"] + split["reward"], "other": 0.0})
    return {"seconds": seconds, "steps": args.steps, "gen_tokens": sum(gen_tokens[args.warmup:total]), "parts": split,
            "settings": {"per_device_train_batch_size": config.per_device_train_batch_size,
                         "num_generations": config.num_generations, "generation_batch_size":
                         config.generation_batch_size, "loss_type": config.loss_type, "beta": config.beta,
                         "epsilon": config.epsilon, "epsilon_high": config.epsilon_high, "bf16": config.bf16,
                         "scale_rewards": config.scale_rewards, "use_vllm": config.use_vllm}}


def run_one(system: str, args: argparse.Namespace) -> dict[str, Any]:
    child_setup(args)
    if system == "flowlm_profile":
        profile_flowlm(args.data, args)
        return {}
    if system == "trl":
        return run_trl(args.data, args)
    return run_flowlm(args.data, system.removeprefix("flowlm_"), args)


# -- report ----------------------------------------------------------------------------------------------
def breakdown(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Median seconds per step of each part, per system, plus each part's share of the step."""
    out = {}
    for s, rs in runs.items():
        step = statistics.median(r["seconds"] / r["steps"] for r in rs)
        med = {k: round(statistics.median(r["parts"][k] for r in rs), 3) for k in PARTS}
        out[s] = {"step_s": round(step, 3), **med, **{f"{k}_share": round(med[k] / step, 3) for k in PARTS}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--async-steps", type=int, default=2, help="flowlm async: the staleness bound")
    ap.add_argument("--async-slots", type=int, default=32, help="flowlm async: sequences decoded together")
    ap.add_argument("--ray", action="store_true", help="also run flowlm's mode ray (a local Ray cluster, one actor)")
    ap.add_argument("--profile", action="store_true", help="also profile flowlm's sync RL step (torch.profiler)")
    ap.add_argument("--quick", "--smoke", action="store_true", help="1 run, 1+1 steps, 16 new tokens: checks it runs")
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
    extra = ("--async-steps", str(args.async_steps), "--async-slots", str(args.async_slots))
    systems = SYSTEMS + (("flowlm_ray",) if args.ray else ())
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    with scratch_dir("rlbench-") as d:
        t0 = time.perf_counter()
        data = build_data(d)
        print(f"data: {json.dumps(data)} ({time.perf_counter() - t0:.0f} s to build)", flush=True)
        for r in range(args.runs):
            for s in systems:
                res = spawn(__file__, s, d, args, extra)
                runs[s].append(res)
                print(f"run {r + 1} {s:<13} {res['steps'] / res['seconds']:7.3f} steps/s  "
                      f"{res['gen_tokens'] / res['seconds']:8.1f} gen tok/s  "
                      f"({res['gen_tokens']} tokens in {res['seconds']:.1f} s; parts "
                      f"{json.dumps({k: round(v, 2) for k, v in res['parts'].items()})})", flush=True)
        if args.profile:
            spawn(__file__, "flowlm_profile", d, args, extra)

    def rate(s: str, k: str) -> list[float]:
        return [x[k] / x["seconds"] for x in runs[s]]

    print(f"\n{PROMPTS} prompts x {GROUP} samples, <= {NEW_TOKENS} new tokens per step, fp32, {args.threads} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps per run, {args.runs} runs; async: async_steps "
          f"{args.async_steps}, {args.async_slots} slots")
    med = print_table({s: rate(s, "steps") for s in systems}, "steps/s", "optimizer steps of 16 completions")
    tok = print_table({s: rate(s, "gen_tokens") for s in systems}, "gen tok/s", "completion tokens trained on")
    split = breakdown(runs)
    print(f"{'seconds per step':<16}" + "".join(f"{k:>12}" for k in ("step",) + PARTS))
    for s, b in split.items():
        print(f"{s:<16}{b['step_s']:>12.3f}" + "".join(f"{b[k]:>12.3f}" for k in PARTS))
    def rounds(a: str, b: str) -> list[float]:  # the ratio within each round (the machine's load drifts)
        return [round(x / y, 3) for x, y in zip(rate(a, "steps"), rate(b, "steps"))]

    ratio, ratio_sync = med["flowlm_async"] / med["trl"], med["flowlm_sync"] / med["trl"]
    both = med["flowlm_async"] / med["flowlm_sync"]
    print(f"flowlm async / TRL = {ratio:.2f}x, flowlm sync / TRL = {ratio_sync:.2f}x (target >= 3x); "
          f"async / sync = {both:.2f}x (target >= 1.5x); steps/s")
    result = {
        "flowlm": round(med["flowlm_async"], 4), "peer": round(med["trl"], 4), "ratio": round(ratio, 3),
        "unit": "steps/s", "flowlm_sync": round(med["flowlm_sync"], 4), "ratio_sync": round(ratio_sync, 3),
        "async_vs_sync": round(both, 3), **{f"{s}_steps_s": round(med[s], 4) for s in systems},
        **{f"{s}_gen_tok_s": round(tok[s], 1) for s in systems},
        "tok_ratio": round(tok["flowlm_async"] / tok["trl"], 3), "breakdown": split,
        "ratio_rounds": rounds("flowlm_async", "trl"), "async_vs_sync_rounds": rounds("flowlm_async", "flowlm_sync"),
        "runs": {s: [{k: v for k, v in x.items() if k != "settings"} for x in runs[s]] for s in systems},
        "prompts_per_step": PROMPTS, "group_size": GROUP, "max_new_tokens": NEW_TOKENS,
        "async_steps": args.async_steps, "async_slots": args.async_slots, "warmup": args.warmup, "steps": args.steps,
        "threads": args.threads, "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "lr": LR,
        "trl_config": runs["trl"][0].get("settings"), "versions": vers, "data": data, "quick": args.quick,
    }
    if args.ray:
        result["ray_vs_async"] = round(med["flowlm_ray"] / med["flowlm_async"], 3)
        print(f"flowlm ray / async = {result['ray_vs_async']:.2f}x (one rollout actor process instead of a thread)")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
