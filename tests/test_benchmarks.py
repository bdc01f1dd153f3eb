"""Every benchmark runs with `--smoke`, ends with the `RESULT {json}` line it documents, and leaves its
temp dir (TMPDIR) empty; `benchmarks/scratch.py` removes its directory on SIGTERM and Ctrl-C too."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
DATA = REPO.parent / "shared" / "data"

# benchmark -> (RESULT keys its docstring documents, folders of ../shared/data it reads, marks)
CASES = {
    "copy_probe.py": ({"variants", "seq", "batch", "lr", "vocab", "init", "smoke"}, (), []),
    "dedup_throughput.py": ({"docs", "flowlm", "flowlm_dt", "flowlm_dt_ws", "flowlm_verified", "flowlm_dt_verified",
                             "peer", "agreement", "agreement_variant", "ratio", "agreement_by_variant",
                             "ratio_by_variant", "load_avg_start", "load_avg_end"}, (), [pytest.mark.slow]),
    "dpo_throughput.py": ({"flowlm", "peer", "ratio", "flowlm_reference", "peer_reference", "ratio_reference", "unit",
                           "flowlm_precompute_s", "trl_precompute_s", "trl_precomputed_incl_precompute", "flowlm_tok_s",
                           "trl_precomputed_tok_s", "trl_reference_tok_s", "runs", "pairs_per_step", "max_length",
                           "n_pairs", "threads", "omp_wait_policy", "trl_configs", "versions", "data", "quick"},
                          (), [pytest.mark.slow]),
    "eval_throughput.py": ({"flowlm", "peer", "ratio", "unit", "flowlm_tok_s", "peer_tok_s", "tok_ratio", "peer_name",
                            "smoke"}, (), [pytest.mark.slow]),
    "generate_throughput.py": ({"flowlm", "peer", "ratio", "ratio_of_medians", "flowlm_waste", "peer_waste", "B_ratio",
                                "threads", "omp_wait_policy", "device", "repeats", "table", "C_ratio", "D_ratio",
                                "C_batched_vs_per_slot", "D_batched_vs_per_slot"}, (), [pytest.mark.slow]),
    "rl_throughput.py": ({"flowlm", "peer", "ratio", "unit", "flowlm_sync", "ratio_sync", "async_vs_sync",
                          "flowlm_sync_steps_s", "flowlm_async_steps_s", "trl_steps_s", "flowlm_sync_gen_tok_s",
                          "flowlm_async_gen_tok_s", "trl_gen_tok_s", "tok_ratio", "breakdown", "runs", "trl_config",
                          "prompts_per_step", "group_size", "max_new_tokens", "async_steps", "async_slots", "warmup",
                          "steps", "threads", "omp_wait_policy", "lr", "versions", "data", "quick"},
                         (), [pytest.mark.slow]),
    "sft_show.py": ({"flowlm", "peer", "ratio", "base", "unit", "flowlm_seconds", "peer_seconds", "flowlm_steps",
                     "peer_steps", "flowlm_tokens", "peer_tokens", "base_unclosed_think", "flowlm_unclosed_think",
                     "peer_unclosed_think", "base_by_task", "flowlm_by_task", "peer_by_task", "settings", "peer_lr",
                     "peer_batch", "items", "examples", "threads", "init", "quick"}, (), [pytest.mark.slow]),
    "sft_throughput.py": ({"flowlm", "peer", "ratio", "trl_best", "trl_best_system", "ratio_vs_best", "unit",
                           "flowlm_tok_s", "trl_default_tok_s", "trl_best_tok_s", "flowlm_labelled_tok_s",
                           "trl_default_labelled_tok_s", "flowlm_slot_tok_s", "trl_default_slot_tok_s", "runs", "batch",
                           "max_length", "threads", "omp_wait_policy", "trl_configs", "versions", "data", "quick"},
                          (), [pytest.mark.slow]),
    "train_throughput.py": ({"flowlm", "flowlm_mode", "peer", "ratio", "mfu", "unit", "flowlm_eager_tok_s",
                             "ratio_eager", "ratio_vs_hf_plain", "ratio_eager_vs_hf_plain_keepmem", "hf_plain_tok_s",
                             "hf_plain_keepmem_tok_s", "trl_sft_tok_s", "ratio_vs_trl", "ratio_eager_vs_trl"},
                            (), [pytest.mark.slow]),
    "tool_rollouts.py": ({"inline_s", "threaded_s", "ratio", "calls", "samples", "call_ms", "workers", "rounds",
                          "threads", "smoke"}, (), []),
    "trace_throughput.py": ({"tokens", "docs", "build_s", "build_ratio", "spans_per_s", "spans_ratio", "spans_only_per_s",
                             "trace_ms_per_output", "counts_equal", "queries", "spans_equal", "outputs",
                             "load_avg_start", "load_avg_end"}, ("text_corpus",), []),
    "upsample_ablation.py": ({"flowlm", "peer", "ratio", "delta_mean_bpb", "noise_sd", "curve", "flat",
                              "load_avg_start", "load_avg_end"}, (), []),
    "verify_throughput.py": ({"workers", "sandbox", "flowlm", "peer", "ratio", "code_flowlm", "code_peer",
                              "code_ratio", "math_correct_accepted", "math_corrupt_rejected", "code_pass",
                              "peer_agrees"}, ("math500", "humaneval"), []),
}
# train_throughput.py on a CUDA machine trains the GPU benchmark instead (its docstring's second key list)
TRAIN_CUDA_KEYS = {"flowlm", "flowlm_mode", "peer", "ratio", "mfu", "device", "preset", "batch", "seq_len"}


@pytest.fixture
def bench_env(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """The benchmark's environment and its own empty TMPDIR. That directory is short (`/tmp/fb-…`), not
    under `tmp_path` (`…/pytest-123/popen-gw1/test_benchmark_smoke_run_dedu0/tmp`): under a TMPDIR that
    long, `flowlm.forkserver` moves multiprocessing's temp dir (the forkserver's socket) to /tmp, out of
    the directory whose emptiness this file checks."""
    tmpdir = Path(tempfile.mkdtemp(prefix="fb-"))
    env = {**os.environ, "TMPDIR": str(tmpdir), "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1",
           # torch creates its compile cache under TMPDIR on import (`torchinductor_<user>`): a cache, not
           # a benchmark's leftover, so it goes elsewhere here
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    try:
        yield env, tmpdir
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def test_every_benchmark_has_a_smoke_case() -> None:
    scripts = {p.name for p in BENCH.glob("*.py")} - {"scratch.py"}
    assert scripts == set(CASES)
    for name in CASES:
        assert "--smoke" in (BENCH / name).read_text(), name


@pytest.mark.parametrize("name", [pytest.param(n, marks=m) for n, (_, _, m) in CASES.items()])
def test_benchmark_smoke_run(name: str, bench_env: tuple[dict[str, str], Path]) -> None:
    keys, data, _ = CASES[name]
    for folder in data:
        if not (DATA / folder).is_dir():
            pytest.skip(f"../shared/data/{folder} (the shared/ checkout beside the repo) not found")
    env, tmpdir = bench_env
    r = subprocess.run([sys.executable, str(BENCH / name), "--smoke"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"{name} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    result = json.loads(last[len("RESULT "):])
    if name == "train_throughput.py" and "device" in result:
        keys = TRAIN_CUDA_KEYS
    assert keys <= set(result), f"missing RESULT keys: {sorted(keys - set(result))}"
    assert len(r.stdout.strip().splitlines()) > 1  # the table came before the RESULT line
    assert sorted(p.name for p in tmpdir.iterdir()) == []


# A shell that started pytest in the background (`cmd &`) makes its children ignore SIGINT, and Python
# then never turns Ctrl-C into KeyboardInterrupt; a terminal's Ctrl-C does, so the child asks for that.
_HOLD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {bench!r})
from scratch import scratch_dir
with scratch_dir("held-") as d:
    (d / "big").write_bytes(b"x" * 4096)
    print(d, flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, -signal.SIGINT)])
def test_scratch_dir_is_removed_on_sigterm_and_ctrl_c(sig: signal.Signals, code: int,
                                                       bench_env: tuple[dict[str, str], Path]) -> None:
    env, tmpdir = bench_env
    p = subprocess.Popen([sys.executable, "-c", _HOLD.format(bench=str(BENCH))], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    held = Path(p.stdout.readline().strip())
    assert held.parent == tmpdir and (held / "big").exists()
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    # SIGTERM: the handler's SystemExit(143); Ctrl-C: KeyboardInterrupt, then Python re-raises SIGINT
    assert p.returncode == code, err
    assert list(tmpdir.iterdir()) == []
