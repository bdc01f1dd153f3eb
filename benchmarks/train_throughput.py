"""Training throughput: flowlm's engine vs a plain PyTorch loop over HF Olmo3 vs TRL's SFTTrainer.

Same tiny model shape, same tokenizer and data (built-in stdlib docstrings), same threads, fp32, 8 x 512
tokens per step, AdamW. Every run is a fresh subprocess (so process-wide state such as the malloc
setting flowlm's trainer applies on CPU, `flowlm.train.cpu_malloc`, cannot leak into a peer's run); runs of
the systems alternate; each run does 2 warm-up steps, then timed steps; the median over runs is
reported (the machine is noisy). `hf_plain_keepmem` is the plain HF loop with that same malloc setting,
shown so the reader can see how much of the gap is the allocator and how much the engine; it is not
one of the peers the ratio is taken against (users run them with the default allocator).
Prints a table and a final `RESULT {json}` line: `flowlm` (tok/s of flowlm's faster mode, named in
`flowlm_mode`), `peer` (best peer tok/s), `ratio`, `mfu`, per-system numbers, and the eager mode's own
ratio (`ratio_eager`). The modes: `flowlm` is the engine as the default recipes run it (eager);
`flowlm_compiled` is the same engine with `compile: true` (per-layer inductor; the compile time, ~20 s
cold here, is in the warm-up steps, not timed), the mode meant for longer runs. The GPU benchmark below
reports its faster mode the same way.

On a CUDA machine it instead trains the 1B preset in bf16 with FSDP2 on one device (one-process NCCL
group, as at scale) on synthetic packed rows (4 x 4096 tokens by default, documents of 256-8191
tokens, so the FlexAttention path masks across document boundaries): flowlm with `compile: true` and
eager, and with `--gpu-peer` the plain HF loop (bf16 autocast, SDPA, fused AdamW). It reports tok/s and
MFU against the GPU's dense bf16 peak (989 TFLOP/s for an H100); MFU counts 6N + attention FLOPs at the
full row length, as `Olmo3.flops_per_token` documents. `benchmarks/gpu_check.sh` runs the CUDA tests
and this benchmark in one call.

    python benchmarks/train_throughput.py [--runs 3] [--steps 5] [--trl-steps 4] [--skip-trl] [--smoke]
    python benchmarks/train_throughput.py --steps 12 [--gpu-batch 8 --gpu-accum 2] [--gpu-peer] [--gpu-profile]

Needs the `bench` extra for the TRL peer (`pip install -e '.[bench]'`: trl, datasets, accelerate);
with `--skip-trl` nothing beyond `pip install -e .`.
`--smoke`: one run of each system, 1 timed step of 2 x 128 tokens on a 200 kB corpus, no compiled mode
(on CUDA: the tiny preset, 2 x 256 tokens, eager): seconds, and the numbers mean nothing.

RESULT keys (CPU): `flowlm`, `flowlm_mode`, `peer`, `ratio`, `mfu`, `unit`, `flowlm_eager_tok_s`, `ratio_eager`,
`ratio_vs_hf_plain`, `ratio_eager_vs_hf_plain_keepmem`, `<system>_tok_s` per other system, and with TRL
`ratio_vs_trl`, `ratio_eager_vs_trl`; (CUDA): `flowlm`, `flowlm_mode`, `peer`, `ratio`, `mfu`, `device`,
`preset`, `batch`, `seq_len`. The tokenizer, token store and every run's files (each run's process
keeps its temporary files there too) live in one temporary directory, removed on success, failure,
Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from scratch import scratch_dir

B, T = 8, 512
DOC_BYTES = 1_500_000


def smoke_sizes() -> None:
    """`--smoke`: 2 x 128 tokens per step on a 200 kB corpus (set in the parent and in every run's process)."""
    global B, T, DOC_BYTES
    B, T, DOC_BYTES = 2, 128, 200_000


def build_data(tmp: Path, vocab: int):
    """Tokenizer and token store under `tmp` (built once, then opened by every run's process)."""
    from flowlm.data.store import TokenStore, tokenize_to_store
    from flowlm.model.tokenizer import load_tokenizer, train_tokenizer

    if not (tmp / "store").exists():
        docs = bench_docs()
        tok = train_tokenizer([d["text"] for d in docs], vocab, tmp / "tok")
        tokenize_to_store(tok, docs, tmp / "store")
    return load_tokenizer(tmp / "tok"), TokenStore.open(tmp / "store")


def bench_docs() -> list[dict]:
    from flowlm.data import builtin

    return builtin.pretrain_docs(0, DOC_BYTES)


def time_steps(step_fn, steps: int, warmup: int = 2) -> float:
    """Seconds per step over `steps` timed steps after `warmup` untimed ones (GPU work included: the
    device is synchronised before the clock starts and before it stops, not between steps)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        step_fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    sync()
    return (time.perf_counter() - t0) / steps


def bench_flowlm(store, model_cfg, steps: int, device: torch.device, precision: str = "fp32",
                 compile: bool = False, grad_accum: int = 1, profile: bool = False) -> tuple[float, float]:
    from flowlm.data.loader import PackedLoader
    from flowlm.data.pack import PackedDataset
    from flowlm.model.olmo3 import Olmo3
    from flowlm.train.config import EngineConfig
    from flowlm.train.engine import Trainer
    from flowlm.train.objectives.lm import LMObjective
    from flowlm.train.parallel import World, parallelize

    torch.manual_seed(0)
    world = World(device=device)
    model = parallelize(Olmo3(model_cfg).to(device), world, compile=compile, bf16=precision == "bf16")
    cfg = EngineConfig(steps=10**6, seq_len=T, batch_size=B, precision=precision, grad_accum=grad_accum)
    loader = PackedLoader(PackedDataset(store, T, seed=0), B, seed=0)
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(model, LMObjective(), loader, cfg, Path(d), world=world, show_progress=False)
        batches = iter(loader)

        def step() -> None:
            trainer.train_step(next(batches))

        s = time_steps(step, steps)
        if profile:
            profile_steps(step)
    return B * T / s, model.flops_per_token(T)  # fully_shard keeps the module itself (no wrapper)


def profile_steps(step_fn, steps: int = 2) -> None:
    """Where the GPU time goes: the top kernels by self time over `steps` steps, and totals by kind."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step_fn()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    kinds: dict[str, float] = {}
    for e in events:
        n = e.key.lower()
        kind = ("gemm" if any(k in n for k in ("gemm", "sm90_xmma", "cutlass", "nvjet", "mm_")) else
                "attention" if any(k in n for k in ("flex", "flash", "attention", "fmha")) else
                "optimizer" if any(k in n for k in ("adam", "foreach", "multi_tensor")) else
                "nccl/copy" if any(k in n for k in ("nccl", "memcpy", "copy", "chunk_cat", "split_with_sizes")) else
                "other")
        kinds[kind] = kinds.get(kind, 0.0) + e.self_device_time_total
    print(f"profile: {total / steps / 1e3:.1f} ms GPU time per step; " +
          ", ".join(f"{k} {v / total:.1%}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:25]:
        print(f"  {e.self_device_time_total / steps / 1e3:8.2f} ms  x{e.count // steps:<4} {e.key[:110]}")


def bench_hf_plain(store, model_cfg, steps: int, keep_freed_memory: bool = False) -> float:
    """The peers' plain loop: HF Olmo3ForCausalLM, 8 x 512 rows, loss from `labels`, AdamW."""
    if keep_freed_memory:
        from flowlm.train.cpu_malloc import keep_freed_memory as keep

        keep()
    model, batches = hf_model_and_batches(store, model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

    def step() -> None:
        b = next(batches)
        out = model(input_ids=b["input_ids"], labels=b["input_ids"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return B * T / time_steps(step, steps)


def hf_model_and_batches(store, model_cfg):
    """The peers' model (HF `Olmo3ForCausalLM`, SDPA attention, seed 0) and an iterator over B x T rows."""
    from transformers import Olmo3ForCausalLM

    from flowlm.data.loader import PackedLoader
    from flowlm.data.pack import PackedDataset
    from flowlm.model.hf import to_hf_config

    torch.manual_seed(0)
    hf_cfg = to_hf_config(model_cfg)
    hf_cfg._attn_implementation = "sdpa"
    return Olmo3ForCausalLM(hf_cfg), iter(PackedLoader(PackedDataset(store, T, seed=0), B, seed=0))


def bench_trl(tok, docs, model_cfg, steps: int) -> float:
    """TRL SFTTrainer with its default packing (bfd, padding-free), fp32, no gradient checkpointing."""
    from datasets import Dataset
    from transformers import Olmo3ForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from flowlm.model.hf import to_hf_config

    torch.manual_seed(0)
    model = Olmo3ForCausalLM(to_hf_config(model_cfg))
    ds = Dataset.from_list([{"text": d["text"]} for d in docs[:4000]])
    times: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as d:
        args = SFTConfig(
            output_dir=d, per_device_train_batch_size=B, max_length=T, packing=True, max_steps=steps + 1,
            bf16=False, gradient_checkpointing=False, report_to=[], logging_steps=1000, save_strategy="no",
            dataloader_num_workers=0, learning_rate=1e-3, use_cpu=True,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
        orig = trainer.training_step

        def counting_step(model, inputs, *a, **kw):
            tokens.append(int(inputs["input_ids"].numel()))
            return orig(model, inputs, *a, **kw)

        trainer.training_step = counting_step
        trainer.train()
    # first step is warm-up; every computed position is a real token with padding-free packing
    return sum(tokens[1:]) / sum(times[1:])


SYSTEMS = ("flowlm", "flowlm_compiled", "hf_plain", "hf_plain_keepmem", "trl_sft")


def run_one(system: str, data_dir: Path, steps: int, threads: int) -> dict:
    """One run of one system in this process: `{"tok_s": ..., "flops_per_token": ...}`."""
    from flowlm.model.config import ModelConfig

    torch.set_num_threads(threads)
    tok, store = build_data(data_dir, 8192)
    model_cfg = ModelConfig.preset("tiny", vocab_size=len(tok))
    if system in ("flowlm", "flowlm_compiled"):
        tps, fpt = bench_flowlm(store, model_cfg, steps, torch.device("cpu"), compile=system == "flowlm_compiled")
        return {"tok_s": tps, "flops_per_token": fpt}
    if system in ("hf_plain", "hf_plain_keepmem"):
        return {"tok_s": bench_hf_plain(store, model_cfg, steps, keep_freed_memory=system == "hf_plain_keepmem")}
    if system == "trl_sft":
        return {"tok_s": bench_trl(tok, bench_docs(), model_cfg, steps)}
    raise SystemExit(f"unknown system {system!r}; choose from {SYSTEMS}")


def spawn(system: str, data_dir: Path, steps: int, threads: int, smoke: bool) -> dict:
    cmd = [sys.executable, __file__, "--one", system, "--data", str(data_dir), "--steps", str(steps),
           "--threads", str(threads), *(["--smoke"] if smoke else [])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{system} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--trl-steps", type=int, default=4)
    ap.add_argument("--trl-runs", type=int, default=1)
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--skip-compile", action="store_true", help="skip flowlm with `compile: true` (inductor)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gpu-preset", default="1b", help="GPU: model preset")
    ap.add_argument("--gpu-batch", type=int, default=4, help="GPU: rows per step")
    ap.add_argument("--gpu-seq", type=int, default=4096, help="GPU: tokens per row")
    ap.add_argument("--gpu-compile", choices=("on", "off", "both"), default="both", help="GPU: flowlm with compile")
    ap.add_argument("--gpu-peer", action="store_true", help="GPU: also time the plain HF loop")
    ap.add_argument("--gpu-accum", type=int, default=1, help="GPU: micro-batches per step (rows split evenly)")
    ap.add_argument("--gpu-profile", action="store_true", help="GPU: print the top kernels of the compiled run")
    ap.add_argument("--smoke", action="store_true",
                    help="1 run, 1 step, tiny sizes, no compile: checks the script runs")
    ap.add_argument("--one", choices=SYSTEMS, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        smoke_sizes()
        args.runs, args.steps, args.trl_steps, args.trl_runs, args.skip_compile = 1, 1, 1, 1, True
        args.gpu_preset, args.gpu_batch, args.gpu_seq, args.gpu_compile = "tiny", 2, 256, "off"
    if args.one:
        # This run's temporary files go under the parent's scratch directory, which the parent removes
        # even when it has to kill this process.
        tempfile.tempdir = str(args.data / "tmp")
        Path(tempfile.tempdir).mkdir(exist_ok=True)
        print(json.dumps(run_one(args.one, args.data, args.steps, args.threads)))
        return
    from flowlm.train.metrics import peak_flops

    if torch.cuda.is_available():
        return gpu_main(args)
    with scratch_dir("trainbench-") as d:
        build_data(d, 8192)
        results: dict[str, list[float]] = {k: [] for k in SYSTEMS}
        fpt = 0.0
        for _ in range(args.runs):
            for system in ("flowlm", "hf_plain", "hf_plain_keepmem") + (() if args.skip_compile else ("flowlm_compiled",)):
                r = spawn(system, d, args.steps, args.threads, args.smoke)
                results[system].append(r["tok_s"])
                fpt = r.get("flops_per_token", fpt)
        if not args.skip_trl:
            for _ in range(args.trl_runs):
                results["trl_sft"].append(spawn("trl_sft", d, args.trl_steps, args.threads, args.smoke)["tok_s"])
    med = {k: statistics.median(v) for k, v in results.items() if v}
    peak = peak_flops(torch.device("cpu"))
    print(f"{'system':<18}{'min':>10}{'median':>10}{'max':>10}   tok/s, {B}x{T}, fp32, {args.threads} threads")
    for k, v in results.items():
        if v:
            print(f"{k:<18}{min(v):>10.0f}{med[k]:>10.0f}{max(v):>10.0f}")
    peers = {k: v for k, v in med.items() if k in ("hf_plain", "trl_sft")}
    best = max(peers.values())
    mode = "compiled" if med.get("flowlm_compiled", 0.0) > med["flowlm"] else "eager"
    head = med["flowlm_compiled" if mode == "compiled" else "flowlm"]
    mfu = head * fpt / peak
    print(f"flowlm eager / hf_plain = {med['flowlm'] / med['hf_plain']:.2f}x"
          + (f"; flowlm eager / trl_sft = {med['flowlm'] / med['trl_sft']:.2f}x" if "trl_sft" in med else "")
          + f"; flowlm eager / hf_plain_keepmem (same malloc setting) = {med['flowlm'] / med['hf_plain_keepmem']:.2f}x")
    if "flowlm_compiled" in med:
        print(f"flowlm compiled (compile: true) / hf_plain = {med['flowlm_compiled'] / med['hf_plain']:.2f}x; "
              f"/ hf_plain_keepmem = {med['flowlm_compiled'] / med['hf_plain_keepmem']:.2f}x")
    print(f"headline: flowlm {mode}, {head:.0f} tok/s = {head / best:.2f}x the best peer; "
          f"CPU MFU {mfu:.1%} (model FLOPs {fpt / 1e6:.1f} MFLOP/token, peak {peak / 1e9:.0f} GFLOP/s)")
    result = {"flowlm": round(head, 1), "flowlm_mode": mode, "peer": round(best, 1), "ratio": round(head / best, 3),
              "mfu": round(mfu, 4), "unit": "tok/s", "flowlm_eager_tok_s": round(med["flowlm"], 1),
              **{f"{k}_tok_s": round(v, 1) for k, v in med.items() if k != "flowlm"},
              "ratio_eager": round(med["flowlm"] / best, 3),
              "ratio_vs_hf_plain": round(head / med["hf_plain"], 3),
              "ratio_eager_vs_hf_plain_keepmem": round(med["flowlm"] / med["hf_plain_keepmem"], 3)}
    if "flowlm_compiled" in med:
        result["ratio_compiled_vs_hf_plain_keepmem"] = round(med["flowlm_compiled"] / med["hf_plain_keepmem"], 3)
    if "trl_sft" in med:
        result["ratio_vs_trl"] = round(head / med["trl_sft"], 3)
        result["ratio_eager_vs_trl"] = round(med["flowlm"] / med["trl_sft"], 3)
    print("RESULT " + json.dumps(result))


def gpu_main(args: argparse.Namespace) -> None:
    """~1B preset, bf16, FSDP2 on one device; tok/s and MFU vs the GPU's bf16 peak, side by side with
    the plain HF loop (bf16 autocast, SDPA, no packing masks) on the same rows."""
    import os

    import torch.distributed as dist

    from flowlm.data.store import TokenStore
    from flowlm.model.config import ModelConfig
    from flowlm.train.metrics import peak_flops

    global B, T
    B, T = args.gpu_batch, args.gpu_seq
    cfg = ModelConfig.preset(args.gpu_preset, max_seq_len=max(T, ModelConfig.preset(args.gpu_preset).max_seq_len))
    peak = peak_flops(torch.device("cuda"), "bf16")
    torch.backends.cuda.matmul.allow_tf32 = True
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    rows: list[tuple[str, float, float, float]] = []
    with scratch_dir("trainbench-gpu-") as d:
        rng = torch.Generator().manual_seed(0)
        lengths = torch.randint(min(256, T // 2), 2 * T, (B * (args.steps + 4) * 2,), generator=rng)
        docs = [torch.randint(0, cfg.vocab_size, (int(n),), generator=rng).tolist() for n in lengths]
        store = TokenStore.write(d / "s", docs, vocab_size=cfg.vocab_size, tokenizer_hash="synthetic")
        for compile in {"on": (True,), "off": (False,), "both": (True, False)}[args.gpu_compile]:
            dist.init_process_group("nccl", rank=0, world_size=1)  # FSDP2 over one GPU, as at scale
            t0 = time.perf_counter()
            tps, fpt = bench_flowlm(store, cfg, args.steps, torch.device("cuda"), precision="bf16", compile=compile,
                                    grad_accum=args.gpu_accum, profile=args.gpu_profile and compile)
            dist.destroy_process_group()
            mem = torch.cuda.max_memory_allocated() / 2**30
            name = f"flowlm {'compiled' if compile else 'eager'}"
            rows.append((name, tps, tps * fpt / peak, mem))
            print(f"{name}: {tps:,.0f} tok/s, MFU {tps * fpt / peak:.1%}, peak mem {mem:.1f} GiB, "
                  f"{time.perf_counter() - t0:.0f} s with warm-up", flush=True)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        if args.gpu_peer:
            tps = bench_hf_gpu(store, cfg, args.steps)
            rows.append(("hf_plain bf16", tps, tps * fpt / peak, torch.cuda.max_memory_allocated() / 2**30))
    print(f"\n{torch.cuda.get_device_name()}, preset {args.gpu_preset} ({param_count(cfg) / 1e9:.2f} B params), "
          f"{B} x {T} tokens/step, bf16, model FLOPs {fpt / 1e9:.2f} GFLOP/token, peak {peak / 1e12:.0f} TFLOP/s")
    print(f"{'system':<20}{'tok/s':>12}{'MFU':>8}{'mem GiB':>10}")
    for name, tps, mfu, mem in rows:
        print(f"{name:<20}{tps:>12,.0f}{mfu:>8.1%}{mem:>10.1f}")
    best = max((r for r in rows if r[0].startswith("flowlm")), key=lambda r: r[1])
    peer = next((r[1] for r in rows if r[0].startswith("hf_plain")), None)
    print("RESULT " + json.dumps({
        "flowlm": round(best[1], 1), "flowlm_mode": best[0], "peer": round(peer, 1) if peer else None,
        "ratio": round(best[1] / peer, 3) if peer else None, "mfu": round(best[2], 4),
        "device": torch.cuda.get_device_name(), "preset": args.gpu_preset, "batch": B, "seq_len": T,
        **{r[0].replace(" ", "_") + "_tok_s": round(r[1], 1) for r in rows}}))


def param_count(cfg) -> int:
    """Parameters of an Olmo3 with config `cfg`, counted on the meta device (no weights built)."""
    from flowlm.model.olmo3 import Olmo3

    with torch.device("meta"):
        return Olmo3(cfg).num_params()


def bench_hf_gpu(store, model_cfg, steps: int) -> float:
    """Plain loop over HF Olmo3ForCausalLM on the GPU: bf16 autocast, SDPA, loss from `labels`, fused AdamW."""
    model, batches = hf_model_and_batches(store, model_cfg)
    model.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def step() -> None:
        # 2 rows per forward: HF upcasts the [rows, T, V] logits to fp32 for the loss, and 4 x 4096 x
        # 100,352 of them (with their gradient) do not fit in 80 GB next to the model.
        rows = next(batches)["input_ids"].cuda()
        for ids in rows.split(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(input_ids=ids, labels=ids)
            (out.loss * ids.shape[0] / rows.shape[0]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return B * T / time_steps(step, steps)


if __name__ == "__main__":
    main()
