"""End-to-end flow on a micro recipe: run record contents, HF loading, skip/rerun rules, crash resume,
and bad-input errors that leave finished work intact."""

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

MICRO = [
    "model.overrides={hidden_size: 64, num_layers: 4, num_heads: 4, num_kv_heads: 2, intermediate_size: 128, sliding_window: 32}",
    "stages.corpus.pretrain_bytes=150000",
    "stages.corpus.midtrain_bytes=60000",
    "stages.corpus.long_docs=6",
    "stages.tokenizer.vocab_size=1024",
    "stages.tokenizer.train_bytes=150000",
    "stages.pretrain.steps=6",
    "stages.pretrain.seq_len=128",
    "stages.pretrain.batch_size=4",
    "stages.pretrain.checkpoint_every=2",
    "stages.midtrain.steps=3",
    "stages.midtrain.seq_len=128",
    "stages.midtrain.batch_size=4",
    "stages.midtrain_2.steps=3",
    "stages.midtrain_2.seq_len=128",
    "stages.midtrain_2.batch_size=4",
    "stages.long_context.steps=4",
    "stages.long_context.seq_len=512",
    "stages.long_context.batch_size=2",
    "stages.long_context.checkpoint_every=2",
    "stages.long_context.yarn.original_max_seq_len=128",
    "eval.max_items=16",
    "eval.heldout_docs=4",
    "threads=1",
]


def flowlm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "flowlm.cli", *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"flowlm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("flow") / "run"
    flowlm("run", "tiny", "--run-dir", str(d), "--no-progress", *MICRO)
    return d


def record(d: Path) -> dict:
    return json.loads((d / "flow.json").read_text())


def test_record_has_every_stage_with_lineage(run_dir):
    rec = record(run_dir)
    assert list(rec["stages"]) == ["corpus", "tokenizer", "pretrain", "midtrain", "midtrain_2", "soup", "long_context"]
    assert rec["recipe"]["overrides"] == MICRO and rec["code"]["source_sha256"]
    for name, st in rec["stages"].items():
        assert st["status"] == "done", name
        assert st["config"] and st["fingerprint"] and st["started"] and st["ended"] and st["output_hash"]
        for rel in st["outputs"].values():
            assert (run_dir / rel).exists(), rel
    assert set(rec["stages"]["pretrain"]["inputs"]) == {"tokenizer", "corpus"}
    assert set(rec["stages"]["midtrain"]["inputs"]) == {"tokenizer", "corpus", "pretrain"}
    assert rec["stages"]["midtrain"]["inputs"]["pretrain"] == rec["stages"]["pretrain"]["output_hash"]
    soup = rec["stages"]["soup"]
    assert soup["metrics"]["ingredients"] == ["midtrain/checkpoints/step_0000003", "midtrain_2/checkpoints/step_0000003"]
    assert set(soup["inputs"]) >= {"midtrain", "midtrain_2"}
    assert rec["stages"]["long_context"]["inputs"]["soup"] == soup["output_hash"]
    # the pretraining corpus went through the curation pipeline with conserved accounting
    cur = rec["stages"]["corpus"]["metrics"]["curation"]
    assert cur["conserved"] is True and all(step["conserved"] for step in cur["steps"].values())
    assert set(cur["steps"]) >= {"filter", "exact", "minhash", "substring", "upsample", "decontam"}


def test_bpb_recorded_after_every_stage_and_falls_from_untrained(run_dir):
    from flowlm.flow.report import bpb_rows

    rows = dict(bpb_rows(record(run_dir)))
    assert list(rows) == ["untrained", "pretrain", "midtrain", "midtrain_2", "soup", "long_context"]
    for label, r in rows.items():
        assert {"code_docstring/bpb", "math/bpb", "prose/bpb", "bpb", "heldout_loss"} <= set(r), label
    assert rows["pretrain"]["bpb"] < rows["untrained"]["bpb"]


@pytest.mark.distributed
def test_torchrun_two_ranks_gives_the_single_process_bpb_table(run_dir, tmp_path):
    """The whole micro flow under `torchrun --nproc_per_node 2` (gloo, FSDP2): artifact stages on rank 0,
    training and BPB evaluation sharded; its BPB table equals the single-process run's within 1e-3."""
    from flowlm.flow.report import bpb_rows

    d = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "flowlm.cli", "run", "tiny",
           "--run-dir", str(d), "--no-progress", *MICRO]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = dict(bpb_rows(record(run_dir))), dict(bpb_rows(record(d)))
    assert list(ddp) == list(single)
    for label, row in single.items():
        for key, value in row.items():
            assert ddp[label][key] == pytest.approx(value, abs=1e-3), (label, key)


def test_checkpoint_loads_in_transformers_with_equal_logits(run_dir):
    from transformers import AutoModelForCausalLM

    from flowlm.model.hf import load_native

    path = run_dir / "midtrain" / "model"  # no YaRN: transformers represents it exactly
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(hf).__name__ == "Olmo3ForCausalLM"
    native, _ = load_native(path)
    ids = torch.randint(0, hf.config.vocab_size, (2, 100))
    with torch.no_grad():
        diff = (hf(ids).logits - native.eval()(ids)).abs().max().item()
    assert diff < 1e-4


def test_rerun_skips_unchanged_and_reruns_downstream_of_a_change(run_dir):
    before = record(run_dir)["stages"]
    proc = flowlm("run", "tiny", "--run-dir", str(run_dir), "--no-progress", *MICRO)
    assert proc.stderr.count("[skip]") == 7
    assert record(run_dir)["stages"]["pretrain"]["started"] == before["pretrain"]["started"]
    proc = flowlm("run", "tiny", "--run-dir", str(run_dir), "--no-progress", *MICRO, "stages.midtrain.steps=2")
    after = record(run_dir)["stages"]
    for name in ("corpus", "tokenizer", "pretrain", "midtrain_2"):
        assert after[name]["fingerprint"] == before[name]["fingerprint"] and f"[skip] {name}" in proc.stderr
    for name in ("midtrain", "soup", "long_context"):
        assert after[name]["fingerprint"] != before[name]["fingerprint"], name
    assert after["midtrain"]["metrics"]["steps"] == 2


def test_killed_stage_resumes_from_its_checkpoint(tmp_path):
    d = tmp_path / "run"
    only = MICRO + ["stages.pretrain.steps=10"]
    args = [sys.executable, "-m", "flowlm.cli", "train", "tiny", "--stage", "corpus", "--stage", "tokenizer", "--stage", "pretrain", "--run-dir", str(d), "--no-progress", *only]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    ckpts = d / "pretrain" / "checkpoints"
    while time.time() < deadline and not list(ckpts.glob("step_0000004")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert record(d)["stages"]["pretrain"]["status"] == "running"
    flowlm("train", "tiny", "--stage", "pretrain", "--run-dir", str(d), "--no-progress", *only)
    st = record(d)["stages"]["pretrain"]
    assert st["status"] == "done" and st["resumed"] is True and st["attempts"] == 2 and st["metrics"]["steps"] == 10
    steps = [json.loads(l)["step"] for l in (d / "pretrain" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert steps == list(range(1, 11))  # no step lost or duplicated across the crash


def test_kill_before_a_stage_is_marked_done_loses_no_recorded_metric(run_dir, tmp_path):
    """Killed after pretrain's final checkpoint, export and eval, before the record says done: the resumed
    entry equals the uninterrupted run's in every metric (timings aside), eval_init included."""
    d = tmp_path / "run"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "FLOWLM_PLUGINS": "tests.plugins.toy",
           "FLOWLM_TOY_KILL_BEFORE_DONE": "pretrain"}
    args = [sys.executable, "-m", "flowlm.cli", "train", "tiny", "--stage", "corpus", "--stage", "tokenizer",
            "--stage", "pretrain", "--run-dir", str(d), "--no-progress", *MICRO]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert record(d)["stages"]["pretrain"]["status"] == "running"
    assert (d / "pretrain" / "checkpoints" / "step_0000006").is_dir()
    flowlm("train", "tiny", "--stage", "pretrain", "--run-dir", str(d), "--no-progress", *MICRO)
    timings = {"tok_s", "mfu"}
    for name in ("corpus", "tokenizer", "pretrain"):
        got, want = record(d)["stages"][name], record(run_dir)["stages"][name]
        assert got["status"] == "done"
        assert {k: v for k, v in got["metrics"].items() if k not in timings} == \
            {k: v for k, v in want["metrics"].items() if k not in timings}, name
    got = record(d)["stages"]["pretrain"]
    assert got["output_hash"] == record(run_dir)["stages"]["pretrain"]["output_hash"]  # the same weights
    assert got["resumed"] is True and got["metrics"]["eval_init"] and got["metrics"]["final_loss"] is not None
    assert got["metrics"]["tok_s"] > 0 and got["metrics"]["mfu"] > 0


def test_bad_inputs_fail_with_one_line_and_keep_finished_work(run_dir, tmp_path):
    before = (run_dir / "flow.json").read_text()
    last = json.loads(before)["recipe"]["overrides"]  # the config the directory holds now
    proc = flowlm("run", "tiny", "--run-dir", str(run_dir), *last, "stages.soup.from=[midtrain, /nonexistent/ckpt]", check=False)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "/nonexistent/ckpt" in errors[0]
    assert "Traceback" not in proc.stderr
    assert (run_dir / "long_context" / "model" / "model.safetensors").exists()
    assert json.loads(before)["stages"]["long_context"]["output_hash"] == record(run_dir)["stages"]["long_context"]["output_hash"]
    proc = flowlm("report", str(tmp_path), check=False)
    assert proc.returncode == 1 and "no run record" in proc.stderr


def test_eval_verb_scores_any_checkpoint(run_dir):
    proc = flowlm("eval", "--model", str(run_dir / "midtrain" / "model"), "--max-items", "8")
    out = json.loads(proc.stdout)
    assert {"code_docstring/bpb", "math/bpb", "prose/bpb", "bpb", "heldout_loss"} <= set(out)
    assert all(0 < v < 20 for v in out.values())


def test_stage_selection_needs_only_what_the_selected_stages_read(run_dir, tmp_path):
    """`--stage midtrain_2` with a changed midtrain config: midtrain_2 reads pretrain (unchanged), not
    midtrain, so it reruns and midtrain is not touched; `--stage soup` reads both midtrains, and the changed
    one is a one-line error naming it."""
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    before = record(d)["stages"]["midtrain"]
    changed = [*MICRO, "stages.midtrain.optim.lr=0.00123", "stages.midtrain_2.seed=7"]
    flowlm("train", "tiny", "--stage", "midtrain_2", "--run-dir", str(d), "--no-progress", *changed)
    stages = record(d)["stages"]
    assert stages["midtrain_2"]["status"] == "done" and stages["midtrain_2"]["config"]["seed"] == 7
    assert stages["midtrain"] == before  # not read by midtrain_2: neither run nor required
    proc = flowlm("train", "tiny", "--stage", "soup", "--run-dir", str(d), "--no-progress", *changed, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "error: stage 'midtrain' is needed but not done; run it first (or drop --stage)" in proc.stderr


def test_help_lists_the_verbs():
    out = flowlm("--help").stdout
    for verb in ("run", "train", "eval", "report", "verify"):
        assert verb in out


def test_user_corpus_files_bad_line_is_named(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"id": "a", "text": "hello world " * 20}) + "\n" + '{"id": "b", "text": \n')
    proc = flowlm("train", "tiny", "--stage", "corpus", "--run-dir", str(tmp_path / "run"),
                  "stages.corpus.source=files", f"stages.corpus.files={{pretrain: [{good}]}}", "stages.corpus.curate=null", check=False)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and f"{good}:2" in errors[0]
