"""SFT throughput: flowlm's engine (`sft` objective on packed chat rows) vs TRL's `SFTTrainer`, real tokens/s.

Workload, identical on both sides: `flowlm.data.builtin.sft_examples(0, 2000)` chat examples (a user math
question, an assistant turn with a `reasoning_content` thinking trace and the answer; ~145 tokens each),
rendered with one flowlm tokenizer (byte-level BPE trained here on ~1 MB of built-in text, asked for
8,192 entries) and its chat template (ChatML + `<think>`; `{% generation %}` marks the assistant
tokens); the tiny OLMo-3 preset (10.5 M parameters) with the same initial weights on both sides (one
seeded native model saved with `flowlm.model.hf.save_pretrained`: flowlm loads it with `load_native`,
TRL as `Olmo3ForCausalLM.from_pretrained`, SDPA attention); loss on assistant tokens only; 8 sequences
of up to 512 tokens per optimizer step; fp32; AdamW lr 2e-5 (TRL's SFT default), betas (0.9, 0.999),
no weight decay, linear decay, grad-norm clip 1.0; `torch.set_num_threads(2)`; no gradient
checkpointing.

- flowlm: `tokenize_to_store` (assistant label mask) -> `PackedDataset` (BFD, intra-document masking)
  -> `PackedLoader` -> `Trainer` with `build_objective("sft")` and an `EngineConfig` as a `train` stage
  builds them, run with `fit()` (metrics file and all; keep_freed_memory on, the engine's CPU default).
- TRL `default`: `SFTConfig` defaults except `assistant_only_loss=True`, `packing=True` (TRL's default
  packing strategy, `bfd`, which turns on padding-free batches), `bf16=False` and
  `gradient_checkpointing=False` (TRL defaults both to True; this CPU has no native bf16 and
  checkpointing recomputes the forward: peer-baselines.md measured TRL's own defaults 1.8x slower
  still; `--peer-configs stock` runs them), plus the shared settings above.
- TRL `best`: the fastest configuration found on this machine: `packing_strategy="wrapped"` (plain
  8 x 512 rows, documents cut at row ends and attending across document boundaries: less work than
  flowlm's masking, not the same semantics). Tried: no packing (`--peer-configs nopack`, padded
  batches of 8 conversations: about as fast as `default` in real tokens/s, 2026-11 on this machine);
  bfd with `attn_implementation="flex_attention"` fails (torch 2.13 has no FlexAttention backward on CPU).

Throughput counts real tokens: positions holding a conversation token (not padding) in the batches of
the timed steps, divided by the wall time of those steps (from the end of the last warm-up step to the
end of the last timed step: data loading, forward, backward, clipping, optimizer, per-step metrics and
logging; TRL's logging and flowlm's metrics file included, checkpoint writes excluded). Labelled (assistant
target) tokens/s and slot tokens/s (every computed position) are reported beside it. Every run is a fresh
subprocess (flowlm's trainer changes process-wide malloc settings on CPU, `flowlm.train.cpu_malloc`, and
TRL caches datasets per process); systems alternate within each round; `--warmup` untimed steps
(2: peer-baselines.md §3a found 1 too few), then `--steps` timed ones; medians over `--runs` runs.
`OMP_WAIT_POLICY=PASSIVE` as in the other benchmarks (the machine is shared).

    python benchmarks/sft_throughput.py [--runs 3] [--steps 4] [--warmup 2] [--threads 2]
                                        [--peer-configs default,best[,nopack,stock]] [--profile] [--quick]

Needs the `bench` extra (trl, datasets, accelerate). `--quick` (alias `--smoke`): one run of each system,
1 warm-up + 1 timed step of 2 x 256 tokens on 200 examples: it checks the script runs; the numbers mean
nothing. `--profile`: one more flowlm run under `torch.profiler` (2 steps after 2 warm-up steps), top
operators by self CPU time, not part of the figures.

Ends with `RESULT {json}`: `flowlm`, `peer` (real tok/s of flowlm / TRL default, medians), `ratio`
(flowlm / TRL default), `trl_best` (the fastest TRL configuration run, named in `trl_best_system`),
`ratio_vs_best`, `unit`, `<system>_tok_s`, `<system>_labelled_tok_s`, `<system>_slot_tok_s` (systems
`flowlm`, `trl_<config>`), `runs` (every run's seconds and token counts), the settings (`batch`,
`max_length`, `warmup`, `steps`, `threads`, `omp_wait_policy`, `lr`, `trl_configs` as each TRL run
reported them, `versions`, `data`) and `quick`. The tokenizer, store, checkpoint and
every run's files live in one temporary directory, removed on success, failure, Ctrl-C and SIGTERM.
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
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from scratch import scratch_dir

B, T = 8, 512
N_EXAMPLES = 2000
TOK_BYTES = 1_000_000
LR = 2e-5  # TRL SFTConfig's default learning rate
# Settings every TRL configuration shares besides the geometry (fp32, no checkpointing: see the docstring).
TRL_COMMON: dict[str, Any] = {"bf16": False, "gradient_checkpointing": False}
TRL_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {**TRL_COMMON, "packing": True},  # packing_strategy: TRL's default ("bfd" -> padding-free)
    "best": {**TRL_COMMON, "packing": True, "packing_strategy": "wrapped"},
    "nopack": {**TRL_COMMON, "packing": False},  # padded batches of B conversations
    "stock": {"packing": True},  # TRL's own bf16=True + gradient checkpointing (peer-baselines "TRL defaults")
}


def quick_sizes() -> None:
    """`--quick`: 2 x 256 tokens per step on 200 examples (set in the parent and in every run's process)."""
    global B, T, N_EXAMPLES, TOK_BYTES
    B, T, N_EXAMPLES, TOK_BYTES = 2, 256, 200, 300_000


# -- shared set-up (also used by dpo_throughput.py) -------------------------------------------------------
def build_base(d: Path, tok_bytes: int) -> tuple[Any, Any]:
    """Tokenizer (`d/tok`) and the seeded tiny OLMo-3 saved as an HF checkpoint (`d/ckpt`): both sides'
    starting weights. Returns `(tokenizer, native model config)`."""
    from flowlm.data import builtin
    from flowlm.model.config import ModelConfig
    from flowlm.model.hf import save_pretrained
    from flowlm.model.olmo3 import Olmo3
    from flowlm.model.tokenizer import train_tokenizer

    tok = train_tokenizer((doc["text"] for doc in builtin.pretrain_docs(0, max_bytes=tok_bytes)), 8192, d / "tok")
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", vocab_size=len(tok))
    save_pretrained(Olmo3(cfg), tok, d / "ckpt")
    return tok, cfg


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "trl", "datasets", "accelerate", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class StepClock:
    """Wall-clock stamps at the end of every optimizer step; `window(warmup, steps)` = seconds of the
    `steps` steps after the first `warmup` (end of step `warmup` to end of step `warmup + steps`)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def tick(self) -> None:
        self.stamps.append(time.perf_counter())

    def window(self, warmup: int, steps: int) -> float:
        if len(self.stamps) < warmup + steps or warmup < 1:
            raise RuntimeError(f"{len(self.stamps)} steps stamped, need {warmup + steps} (warm-up ≥ 1)")
        return self.stamps[warmup + steps - 1] - self.stamps[warmup - 1]


def flowlm_clock_callback(clock: StepClock) -> Any:
    """A flowlm `Callback` that stamps `clock` at the end of every step."""
    from flowlm.train.engine import Callback

    class Stamp(Callback):
        def on_step_end(self, trainer: Any, step: int, record: dict[str, Any]) -> None:
            clock.tick()

    return Stamp()


def trl_clock_callback(clock: StepClock) -> Any:
    from transformers import TrainerCallback

    class Stamp(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock.tick()

    return Stamp()


def count_inputs(trainer: Any, counts: list[dict[str, int]], fn: Callable[[dict[str, Any]], dict[str, int]]) -> None:
    """Record `fn(inputs)` for every batch a HF/TRL trainer trains on (wraps the instance's `training_step`:
    measurement only, the step itself is unchanged)."""
    inner = trainer.training_step

    def counted(model: Any, inputs: dict[str, Any], *a: Any, **kw: Any) -> Any:
        counts.append(fn(inputs))
        return inner(model, inputs, *a, **kw)

    trainer.training_step = counted


def engine_config(steps: int, seq_len: int, batch: int, lr: float) -> Any:
    """The flowlm loop settings matching the peer's: AdamW (0.9, 0.999), no decay, linear to 0, clip 1."""
    from flowlm.train.config import EngineConfig, OptimConfig, ScheduleConfig

    return EngineConfig(steps=steps, seq_len=seq_len, batch_size=batch, precision="fp32", clip=1.0,
                        optim=OptimConfig(lr=lr, betas=(0.9, 0.999), weight_decay=0.0),
                        schedule=ScheduleConfig(kind="linear", final_lr_ratio=0.0),
                        checkpoint_every=10**6, keep_last=1, seed=0)


def spawn(script: str, system: str, data: Path, args: argparse.Namespace, extra: tuple[str, ...] = ()) -> dict:
    """One run of `system` in a fresh process; its last stdout line is its JSON result (earlier lines echoed)."""
    cmd = [sys.executable, script, "--one", system, "--data", str(data), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), *(["--quick"] if args.quick else []), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{system} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    lines = out.stdout.strip().splitlines()
    for line in lines[:-1]:
        print(f"  [{system}] {line}")
    return json.loads(lines[-1])


def child_setup(args: argparse.Namespace) -> None:
    """In a run's process: its temporary files go under the parent's scratch directory (which the parent
    removes even when it has to kill this process); threads; quiet libraries."""
    tempfile.tempdir = str(args.data / "tmp")
    Path(tempfile.tempdir).mkdir(exist_ok=True)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def print_table(rows: dict[str, list[float]], unit: str, note: str) -> dict[str, float]:
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    print(f"{'system':<16}{'min':>10}{'median':>10}{'max':>10}   {unit}, {note}")
    for k, v in rows.items():
        if v:
            print(f"{k:<16}{min(v):>10.2f}{med[k]:>10.2f}{max(v):>10.2f}")
    return med


# -- data ------------------------------------------------------------------------------------------------
def build_data(d: Path) -> dict[str, Any]:
    """Tokenizer, checkpoint, the examples as JSON (TRL's input) and the flowlm token store (not timed)."""
    from flowlm.data import builtin
    from flowlm.data.pack import PackedDataset
    from flowlm.data.store import tokenize_to_store

    tok, _ = build_base(d, TOK_BYTES)
    examples = builtin.sft_examples(0, N_EXAMPLES)
    (d / "sft.json").write_text(json.dumps([{"messages": e["messages"]} for e in examples]))
    store = tokenize_to_store(tok, examples, d / "store")
    labelled = int(sum(int(store.doc_mask(i).sum()) for i in range(len(store))))
    return {"examples": len(examples), "tokens": store.n_tokens, "assistant_tokens": labelled,
            "vocab": len(tok), "flowlm_packing_efficiency": round(PackedDataset(store, T, seed=0).efficiency, 4)}


# -- flowlm ----------------------------------------------------------------------------------------------
def batch_counts(batch: dict[str, torch.Tensor], pad_id: int) -> dict[str, int]:
    return {"real": int((batch["input_ids"] != pad_id).sum()), "labelled": int((batch["labels"] != -100).sum()),
            "slots": int(batch["input_ids"].numel())}


def flowlm_trainer(d: Path, steps: int, callbacks: tuple = ()) -> tuple[Any, Any, Any]:
    """Model, loader and trainer as a `train` stage with `objective: sft` builds them; `(trainer, loader, dataset)`."""
    from flowlm.data.loader import PackedLoader
    from flowlm.data.pack import PackedDataset
    from flowlm.data.store import TokenStore
    from flowlm.model.hf import load_native
    from flowlm.train.engine import Trainer
    from flowlm.train.objectives import build_objective
    from flowlm.train.parallel import World, parallelize

    model, _ = load_native(d / "ckpt")
    world = World()
    model = parallelize(model, world, compile=False, bf16=False)
    dataset = PackedDataset(TokenStore.open(d / "store"), T, seed=0)
    loader = PackedLoader(dataset, B, seed=0)
    trainer = Trainer(model, build_objective("sft"), loader, engine_config(steps, T, B, LR),
                      Path(tempfile.mkdtemp(prefix="flowlm-sft-")), world=world, callbacks=callbacks,
                      show_progress=False)
    trainer.resume()
    return trainer, loader, dataset


def run_flowlm(d: Path, warmup: int, steps: int) -> dict[str, Any]:
    from flowlm.data.loader import PackedLoader

    clock = StepClock()
    total = warmup + steps + 1  # the final step also writes the end-of-run checkpoint: not timed
    trainer, _, dataset = flowlm_trainer(d, total, (flowlm_clock_callback(clock),))
    # the loader is deterministic: a twin yields the very batches the trainer will get
    twin = iter(PackedLoader(dataset, B, seed=0))
    counts = [batch_counts(next(twin), dataset.pad_id) for _ in range(total)]
    trainer.fit()
    timed = counts[warmup:warmup + steps]
    return {"seconds": clock.window(warmup, steps), **{k: sum(c[k] for c in timed) for k in timed[0]}}


def profile_flowlm(d: Path) -> None:
    trainer, loader, _ = flowlm_trainer(d, 10**6)
    profile_trainer(trainer, loader)


def profile_trainer(trainer: Any, loader: Any, steps: int = 2, top: int = 25) -> None:
    """Top operators by self CPU time over `steps` flowlm steps (`Trainer.train_step`) after 2 warm-up steps."""
    from torch.profiler import ProfilerActivity, profile

    batches = iter(loader)
    for _ in range(2):
        trainer.train_step(next(batches))
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.train_step(next(batches))
    wall = (time.perf_counter() - t0) / steps
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"profile: {wall * 1e3:.0f} ms wall per step (under the profiler), {total / steps / 1e3:.0f} ms self CPU per step")
    for e in events[:top]:
        print(f"{e.self_cpu_time_total / steps / 1e3:9.1f} ms {e.self_cpu_time_total / total:6.1%}  "
              f"x{e.count // steps:<5} {e.key[:90]}")


# -- TRL -------------------------------------------------------------------------------------------------
def run_trl(d: Path, config: str, warmup: int, steps: int) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import Olmo3ForCausalLM
    from trl import SFTConfig, SFTTrainer

    from flowlm.model.tokenizer import load_tokenizer

    settings = dict(TRL_CONFIGS[config])
    attn = settings.pop("attn_implementation", "sdpa")
    tok = load_tokenizer(d / "tok")
    model = Olmo3ForCausalLM.from_pretrained(str(d / "ckpt"), dtype=torch.float32, attn_implementation=attn)
    ds = Dataset.from_list(json.loads((d / "sft.json").read_text()))
    clock, counts = StepClock(), []
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-sft-"), per_device_train_batch_size=B, max_length=T,
        assistant_only_loss=True, max_steps=warmup + steps, learning_rate=LR, report_to=[], save_strategy="no",
        use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True, **settings)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         callbacks=[trl_clock_callback(clock)])
    pad = tok.pad_token_id
    count_inputs(trainer, counts, lambda b: {"real": int((b["input_ids"] != pad).sum()),
                                             "labelled": int((b["labels"] != -100).sum()),
                                             "slots": int(b["input_ids"].numel())})
    trainer.train()
    timed = counts[warmup:warmup + steps]
    return {"seconds": clock.window(warmup, steps), **{k: sum(c[k] for c in timed) for k in timed[0]},
            "settings": {**settings, "attn_implementation": attn,
                         "packing_strategy": args.packing_strategy if args.packing else None,
                         "padding_free": bool(getattr(trainer, "padding_free", args.padding_free)),
                         "bf16": args.bf16, "activation_checkpointing": bool(
                             getattr(args, "activation_checkpointing", args.gradient_checkpointing)),
                         "optim": str(args.optim), "lr_scheduler": str(args.lr_scheduler_type)}}


def run_one(system: str, args: argparse.Namespace) -> dict[str, Any]:
    child_setup(args)
    if system == "flowlm":
        return run_flowlm(args.data, args.warmup, args.steps)
    if system == "flowlm_profile":
        profile_flowlm(args.data)
        return {}
    return run_trl(args.data, system.removeprefix("trl_"), args.warmup, args.steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-configs", default="default,best", help=f"TRL configurations, of {sorted(TRL_CONFIGS)}")
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
    peers = [c.strip() for c in args.peer_configs.split(",") if c.strip()]
    if "default" not in peers or any(c not in TRL_CONFIGS for c in peers):
        raise SystemExit(f"--peer-configs must include 'default' and name only {sorted(TRL_CONFIGS)}")
    systems = ["flowlm"] + [f"trl_{c}" for c in peers]
    vers = versions()
    print(f"versions: {json.dumps(vers)}; threads {args.threads}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    with scratch_dir("sftbench-") as d:
        t0 = time.perf_counter()
        data = build_data(d)
        print(f"data: {json.dumps(data)} ({time.perf_counter() - t0:.0f} s to build)", flush=True)
        for r in range(args.runs):
            for s in systems:
                res = spawn(__file__, s, d, args)
                runs[s].append(res)
                print(f"run {r + 1} {s:<12} {res['real'] / res['seconds']:8.1f} real tok/s  "
                      f"{res['labelled'] / res['seconds']:8.1f} labelled tok/s  {res['slots'] / res['seconds']:8.1f} "
                      f"slot tok/s  ({res['real']} real tokens in {res['seconds']:.1f} s)", flush=True)
        if args.profile:
            spawn(__file__, "flowlm_profile", d, args)

    def rate(s: str, k: str) -> list[float]:
        return [x[k] / x["seconds"] for x in runs[s]]

    print(f"\n{B} sequences x {T} tokens per step, fp32, {args.threads} threads, {args.warmup} warm-up + "
          f"{args.steps} timed steps per run, {args.runs} runs")
    med = print_table({s: rate(s, "real") for s in systems}, "real tok/s", "non-padding tokens of the conversations")
    lab = {s: statistics.median(rate(s, "labelled")) for s in systems}
    slot = {s: statistics.median(rate(s, "slots")) for s in systems}
    peer = med["trl_default"]
    best_name = max((s for s in systems if s != "flowlm"), key=lambda s: med[s])
    print(f"flowlm / TRL default = {med['flowlm'] / peer:.2f}x; flowlm / TRL best ({best_name}) = "
          f"{med['flowlm'] / med[best_name]:.2f}x (real tok/s)")
    configs = {s: runs[s][0].get("settings") for s in systems if s != "flowlm"}
    for s, c in configs.items():
        print(f"{s}: {json.dumps(c)}")
    result = {
        "flowlm": round(med["flowlm"], 1), "peer": round(peer, 1), "ratio": round(med["flowlm"] / peer, 3),
        "trl_best": round(med[best_name], 1), "trl_best_system": best_name,
        "ratio_vs_best": round(med["flowlm"] / med[best_name], 3), "unit": "real tok/s",
        **{f"{s}_tok_s": round(med[s], 1) for s in systems},
        **{f"{s}_labelled_tok_s": round(lab[s], 1) for s in systems},
        **{f"{s}_slot_tok_s": round(slot[s], 1) for s in systems},
        "runs": {s: [{k: v for k, v in x.items() if k != "settings"} for x in runs[s]] for s in systems},
        "batch": B, "max_length": T, "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "lr": LR, "trl_configs": configs, "versions": vers,
        "data": data, "quick": args.quick,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
