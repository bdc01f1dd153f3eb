"""The eval stage inside a micro flow, `flowlm eval` on a checkpoint of that run (BPB agrees with flow.json
because the run's own settings are used), the report's eval table, and the contamination check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = """
name: micro_eval
model:
  preset: tiny
  overrides: {hidden_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, intermediate_size: 128, sliding_window: 32}
threads: 1
eval: {max_items: 12, heldout_docs: 3}
stages:
  corpus: {source: builtin, curate: null, pretrain_bytes: 120000, midtrain_bytes: 20000, long_docs: 2}
  tokenizer: {vocab_size: 512, train_bytes: 120000}
  pretrain: {data: pretrain, steps: 4, seq_len: 128, batch_size: 4, checkpoint_every: 2}
  evaluate:
    kind: eval
    models: [pretrain]
    suites: [arithmetic, counting]
    max_items: 6
    n: 2
    max_new_tokens: 8
    format: plain
    workers: 0
"""


def flowlm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "flowlm.cli", *args], capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"flowlm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("flow_eval")
    (d / "micro_eval.yaml").write_text(RECIPE)
    flowlm("run", str(d / "micro_eval.yaml"), "--run-dir", str(d / "run"), "--no-progress")
    return d / "run"


def record(d: Path) -> dict:
    return json.loads((d / "flow.json").read_text())


def test_eval_stage_records_results_and_contamination(run_dir):
    st = record(run_dir)["stages"]["evaluate"]
    assert st["status"] == "done" and st["kind"] == "eval"
    assert set(st["inputs"]) == {"pretrain", "corpus"}
    res = st["metrics"]["results"]["pretrain"]
    for suite in ("arithmetic", "counting"):
        s = res[suite]
        assert s["items"] == 6 and s["n"] == 2 and {"pass@1", "pass@2", "maj@2", "mean_reward"} <= set(s)
        assert s["contamination"] == 0.0  # held-out items never reach a training mix
    detail = json.loads((run_dir / st["outputs"]["results"]).read_text())
    item = detail["items"]["pretrain"]["arithmetic"][0]
    assert len(item["samples"]) == 2 and {"text", "score", "reason", "tokens", "finish_reason"} <= set(item["samples"][0])


def test_report_shows_the_eval_table(run_dir):
    out = flowlm("report", str(run_dir)).stdout
    assert "arithmetic" in out and "counting" in out and "pass@1" in out


def test_cli_bpb_of_a_run_checkpoint_equals_the_record(run_dir):
    recorded = record(run_dir)["stages"]["pretrain"]["metrics"]["eval"]
    proc = flowlm("eval", "--model", str(run_dir / "pretrain" / "model"))
    ours = json.loads(proc.stdout)
    assert set(ours) == set(recorded)
    for k, v in recorded.items():
        assert ours[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert "flow.json" in proc.stderr and "max_items=12" in proc.stderr and "heldout_docs=3" in proc.stderr
    # outside the run's settings (the built-in defaults) the same checkpoint scores differently
    other = json.loads(flowlm("eval", "--model", str(run_dir / "pretrain" / "model"), "--seed", "0").stdout)
    assert other["heldout_loss"] != pytest.approx(recorded["heldout_loss"], rel=1e-5)
