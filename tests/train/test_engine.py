"""Engine equivalences: grad accumulation == big batch, exact resume after kill -9, 2-process FSDP2 == 1 process,
and corrupt checkpoints rejected with one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from flowlm.errors import FlowError
from flowlm.train import checkpoint as ckpt

sys.path.insert(0, str(Path(__file__).parent))
import _worker  # noqa: E402

WORKER = Path(__file__).parent / "_worker.py"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("store") / "s"
    _worker.make_store(d)
    return d


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_grad_accumulation_equals_big_batch(tmp_path, store_dir):
    torch.set_num_threads(1)
    a = _worker.build(tmp_path / "a", store_dir, steps=2, grad_accum=1)
    b = _worker.build(tmp_path / "b", store_dir, steps=2, grad_accum=4)
    batch = next(iter(a.loader))
    # documents of different lengths: the micro-batches hold different token counts, so a per-micro
    # mean would differ from the big batch; token weighting must make them equal.
    counts = [int((batch["labels"][i : i + 2] != -100).sum()) for i in range(0, 8, 2)]
    assert len(set(counts)) > 1, counts
    grads = {}
    for name, t in (("a", a), ("b", b)):
        # capture the gradients the optimizer would apply (Adam's first step is sign(g)-like and would
        # amplify float noise on near-zero entries, so compare gradients, not updated weights)
        t.optimizer.step = lambda t=t, name=name: grads.__setitem__(name, {n: p.grad.clone() for n, p in t.model.named_parameters()})
    ra, rb = a.train_step(batch), b.train_step(batch)
    assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
    assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)
    for n in grads["a"]:
        torch.testing.assert_close(grads["a"][n], grads["b"][n], rtol=1e-4, atol=1e-7, msg=n)


def test_exact_resume_after_kill_9(tmp_path, store_dir):
    steps = 12
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(WORKER), str(ref), str(store_dir), str(steps)], check=True)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(WORKER), str(run), str(store_dir), str(steps)])
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a few checkpoints exist, mid-run
        if (run / "metrics.jsonl").exists() and max(losses(run), default=0) >= 7:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(losses(run))
    assert killed_at < steps, "the run finished before it could be killed; the test proves nothing"
    subprocess.run([sys.executable, str(WORKER), str(run), str(store_dir), str(steps), "--resume"], check=True)
    got, want = losses(run), losses(ref)
    assert sorted(got) == list(range(1, steps + 1))
    assert got == want  # bitwise-equal losses, step for step


def test_tied_embeddings_save_once_and_resume_exactly(tmp_path, store_dir):
    """A tied model (lm_head.weight is embed_tokens.weight) checkpoints with the matrix stored once, as
    HF stores it, and resumes tied with the uninterrupted run's losses."""
    torch.set_num_threads(1)
    ref = _worker.build(tmp_path / "ref", store_dir, steps=4, tie=True)
    ref.fit()
    run = _worker.build(tmp_path / "run", store_dir, steps=4, tie=True)
    run.fit()
    shutil.rmtree(ckpt.step_dir(tmp_path / "run" / "checkpoints", 4))  # as if killed after step 2's save
    saved = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert saved.name == "step_0000002"
    with safe_open(str(saved / "model.safetensors"), "pt") as f:
        assert "model.embed_tokens.weight" in f.keys() and "lm_head.weight" not in f.keys()
    assert json.loads((saved / ckpt.MANIFEST).read_text())["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    resumed = _worker.build(tmp_path / "run", store_dir, steps=4, tie=True)
    resumed.resume()
    assert resumed.step == 2
    m = resumed.model
    assert m.lm_head.weight is m.model.embed_tokens.weight
    resumed.fit()
    got, want = losses(tmp_path / "run"), losses(tmp_path / "ref")
    assert sorted(got) == [1, 2, 3, 4]
    assert got == want
    assert m.lm_head.weight is m.model.embed_tokens.weight
    torch.testing.assert_close(m.lm_head.weight, ref.model.lm_head.weight, rtol=0, atol=0)


@pytest.mark.distributed
def test_fsdp2_two_processes_equal_one(tmp_path, store_dir):
    steps = 3
    one = tmp_path / "one"
    subprocess.run([sys.executable, str(WORKER), str(one), str(store_dir), str(steps)], check=True)
    two = tmp_path / "two"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*torchrun, str(WORKER), str(two), str(store_dir), str(steps)], check=True, env=env, timeout=300)
    l1, l2 = losses(one), losses(two)
    assert sorted(l2) == [1, 2, 3]
    for s in l1:
        assert l2[s] == pytest.approx(l1[s], rel=1e-4), (s, l1[s], l2[s])
    # the saved (gathered) weights agree too
    w1, _, _ = ckpt.load_checkpoint(one / "checkpoints" / f"step_{steps:07d}")
    w2, _, _ = ckpt.load_checkpoint(two / "checkpoints" / f"step_{steps:07d}")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-3, atol=1e-5, msg=k)


def test_corrupt_and_half_written_checkpoints_are_rejected(tmp_path, store_dir):
    out = tmp_path / "c"
    subprocess.run([sys.executable, str(WORKER), str(out), str(store_dir), "4"], check=True)
    good = out / "checkpoints" / "step_0000004"
    ckpt.validate_checkpoint(good)
    truncated = tmp_path / "trunc"
    shutil.copytree(good, truncated)
    with open(truncated / "model.safetensors", "r+b") as f:
        f.truncate(100)
    with pytest.raises(FlowError, match="does not match the manifest") as info:
        ckpt.load_checkpoint(truncated)
    assert "\n" not in str(info.value)
    half = tmp_path / "half"
    shutil.copytree(good, half)
    (half / "checkpoint.json").unlink()
    with pytest.raises(FlowError, match="half-written"):
        ckpt.load_checkpoint(half)
    # a half-written newest checkpoint is skipped when resuming; the older complete one is used
    shutil.copytree(half, out / "checkpoints" / "step_0000006")
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")][-1] == "step_0000004"


def test_bf16_autocast_step_and_tensorboard_events(tmp_path, store_dir):
    torch.set_num_threads(1)
    t = _worker.build(tmp_path / "bf", store_dir, steps=2)
    t.cfg = t.cfg.model_copy(update={"precision": "bf16"})
    summary = t.fit()
    assert summary["steps"] == 2 and summary["final_loss"] == summary["final_loss"]  # finite, not NaN
    assert list((tmp_path / "bf" / "tensorboard").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (tmp_path / "bf" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all({"loss", "lr", "grad_norm", "tok_s"} <= set(r) for r in rows)


def test_compiled_layers_train_like_eager_and_keep_parameter_names(tmp_path, store_dir):
    # EngineConfig.compile -> parallelize(compile=True): per-layer torch.compile (inductor on CPU).
    from flowlm.train.parallel import World, parallelize

    torch.set_num_threads(1)
    eager = _worker.build(tmp_path / "eager", store_dir, steps=3)
    compiled = _worker.build(tmp_path / "compiled", store_dir, steps=3)
    compiled.model.load_state_dict(eager.model.state_dict())
    parallelize(compiled.model, World(), compile=True)
    batches = list(zip(range(3), iter(eager.loader)))
    la = [eager.train_step(b)["loss"] for _, b in batches]
    lb = [compiled.train_step(b)["loss"] for _, b in batches]
    assert lb == pytest.approx(la, rel=1e-4)
    assert la[-1] != la[0]  # the steps really updated the weights
    msd, _ = ckpt.full_state(compiled.model, None)
    assert set(msd) == set(eager.model.state_dict())  # no "_orig_mod." in checkpoint names


def test_compile_on_cpu_without_a_cxx_compiler_is_a_config_error(monkeypatch):
    # inductor would fail only at the first step, deep in a traceback; parallelize says it up front.
    from flowlm.errors import ConfigError
    from flowlm.model.config import ModelConfig
    from flowlm.model.olmo3 import Olmo3
    from flowlm.train import parallel

    micro_config = lambda: ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2,  # noqa: E731
                                       num_kv_heads=2, intermediate_size=48, max_seq_len=32, sliding_window=8)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(parallel.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="compile: true on CPU needs a C\\+\\+ compiler"):
        parallel.parallelize(Olmo3(micro_config()), parallel.World(), compile=True)
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(ConfigError, match="CXX=/nonexistent/g\\+\\+ is not on PATH"):
        parallel.parallelize(Olmo3(micro_config()), parallel.World(), compile=True)
    monkeypatch.undo()
    model = parallel.parallelize(Olmo3(micro_config()), parallel.World(), compile=True)  # g++ is here
    assert all(hasattr(layer, "_orig_mod") for layer in model.model.layers)
