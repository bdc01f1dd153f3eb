"""Issue #17: `kill -9` one rank of a 2-process torchrun run mid-stage, rerun the same command: it resumes from
the last checkpoint and finishes, and (the README promises "a stage killed mid-run resumes from its last
checkpoint with identical losses") it ends where an uninterrupted 2-rank run ends: the same loss at every
step and the same exported weights.

The run is `torchrun --nproc_per_node 2 -m flowlm.cli train tiny --stage corpus --stage tokenizer --stage
pretrain --run-dir R` on CPU (gloo), the tiny recipe shrunk with dotted overrides to a micro model whose
pretraining takes 24 steps with a checkpoint every 4."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

STEPS, EVERY, KILL_AT = 24, 4, 8
MICRO = [
    "model.overrides={hidden_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, intermediate_size: 128, sliding_window: 32}",
    "stages.corpus.pretrain_bytes=80000",
    "stages.corpus.midtrain_bytes=20000",
    "stages.corpus.long_docs=2",
    "stages.corpus.curate=null",
    "stages.tokenizer.vocab_size=512",
    "stages.tokenizer.train_bytes=80000",
    f"stages.pretrain.steps={STEPS}",
    "stages.pretrain.seq_len=128",
    "stages.pretrain.batch_size=4",
    f"stages.pretrain.checkpoint_every={EVERY}",
    "eval.max_items=4",
    "eval.heldout_docs=2",
    "eval.tasks=[prose]",
    "threads=1",
]


def torchrun() -> list[str]:
    """The installed `torchrun` script of this interpreter (as a user types it), else the module."""
    beside = Path(sys.executable).with_name("torchrun")
    return [str(beside)] if beside.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def command(run_dir: Path) -> list[str]:
    return [*torchrun(), "--nproc_per_node", "2", "-m", "flowlm.cli", "train", "tiny", "--stage", "corpus",
            "--stage", "tokenizer", "--stage", "pretrain", "--run-dir", str(run_dir), "--no-progress", *MICRO]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(run_dir: Path) -> dict[str, str]:
    """PET_MASTER_PORT is torchrun's own --master_port: a free one, so concurrent test runs do not share 29500.
    TMPDIR is beside the run: the rank that outlives a killed peer writes its crash log there, not into /tmp."""
    tmp = run_dir.with_name(run_dir.name + "-tmp")
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PET_MASTER_PORT": str(free_port()),
            "TMPDIR": str(tmp)}


def run(run_dir: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(command(run_dir), check=False, capture_output=True, text=True, env=env(run_dir), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def stage(run_dir: Path, name: str = "pretrain") -> dict:
    return json.loads((run_dir / "flow.json").read_text())["stages"][name]


def step_lines(run_dir: Path) -> dict[int, str]:
    """metrics.jsonl's training-step lines, verbatim, by step."""
    lines = (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()
    out: dict[int, str] = {}
    for line in lines:
        row = json.loads(line)
        if "loss" in row:
            assert row["step"] not in out, f"step {row['step']} logged twice"
            out[row["step"]] = line
    return out


def worker(launcher: psutil.Process, rank: int) -> psutil.Process | None:
    for p in launcher.children(recursive=True):
        try:
            if p.environ().get("RANK") == str(rank) and p.environ().get("LOCAL_RANK") is not None:
                return p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


@pytest.mark.distributed
def test_kill_one_rank_mid_stage_then_rerun_resumes_and_ends_like_an_uninterrupted_run(tmp_path):
    ref, d = tmp_path / "ref", tmp_path / "killed"
    run(ref)  # the uninterrupted run

    proc = subprocess.Popen(command(d), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(d),
                            start_new_session=True)
    try:
        launcher = psutil.Process(proc.pid)
        ckpt = d / "pretrain" / "checkpoints" / f"step_{KILL_AT:07d}"
        deadline = time.time() + 240
        while not ckpt.is_dir():
            assert proc.poll() is None, f"the run ended before step {KILL_AT}:\n{proc.stderr.read()[-3000:]}"
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        victim = worker(launcher, 1)
        assert victim is not None, "rank 1 not found among torchrun's children"
        os.kill(victim.pid, signal.SIGKILL)  # kill -9 one rank; torchrun tears the other down
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0, err[-2000:]
    killed = stage(d)
    assert killed["status"] in ("running", "failed"), killed["status"]  # mid-stage: not done, no model exported
    assert not (d / "pretrain" / "model").exists()
    assert not (d / "pretrain" / "checkpoints" / f"step_{STEPS:07d}").exists()
    newest = max(int(p.name.split("_")[1]) for p in (d / "pretrain" / "checkpoints").glob("step_*"))
    assert KILL_AT <= newest < STEPS
    done_before = {s: line for s, line in step_lines(d).items() if s <= newest}
    assert sorted(done_before) == list(range(1, newest + 1))

    again = run(d)  # the same command again
    assert "[skip] corpus" in again.stderr and "[skip] tokenizer" in again.stderr
    assert "pretrain (train) — resuming" in again.stderr
    st = stage(d)
    assert st["status"] == "done" and st["resumed"] is True and st["attempts"] == 2
    assert st["metrics"]["steps"] == STEPS
    assert (d / "pretrain" / "model" / "model.safetensors").is_file()
    # resumed from the checkpoint, not from step 0: the steps up to it were not trained (nor logged) again
    lines = step_lines(d)
    assert sorted(lines) == list(range(1, STEPS + 1))  # no step lost or duplicated across the kill
    assert all(lines[s] == done_before[s] for s in range(1, newest + 1))  # verbatim, step_time included

    # exact resume holds with 2 ranks: every step's loss, the exported weights and the recorded metrics
    want, got = step_lines(ref), lines
    for s in range(1, STEPS + 1):
        assert json.loads(got[s])["loss"] == json.loads(want[s])["loss"], s
    assert st["output_hash"] == stage(ref)["output_hash"]
    assert (d / "pretrain" / "model" / "model.safetensors").read_bytes() == \
        (ref / "pretrain" / "model" / "model.safetensors").read_bytes()
    timings = {"tok_s", "mfu"}
    assert {k: v for k, v in st["metrics"].items() if k not in timings} == \
        {k: v for k, v in stage(ref)["metrics"].items() if k not in timings}
