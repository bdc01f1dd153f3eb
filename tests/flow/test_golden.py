"""The LM objective on the objective contract trains the tiny recipe to the same numbers, bit for bit, as
the engine before the contract (`golden_lm_losses.json`, recorded at commit d0425f5 on this machine type)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).with_name("golden_lm_losses.json")


def test_tiny_recipe_losses_match_the_recorded_ones_bit_for_bit(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    d = tmp_path / "run"
    args = [sys.executable, "-m", "flowlm.cli", "train", "tiny", "--stage", "corpus", "--stage", "tokenizer",
            "--stage", "pretrain", "--stage", "midtrain", "--run-dir", str(d), "--no-progress", *golden["overrides"]]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage, want in golden["stages"].items():
        rows = [json.loads(line) for line in (d / stage / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "loss" in r]
        assert [r["loss"].hex() for r in steps] == want["loss"], stage
        assert [r["grad_norm"].hex() for r in steps] == want["grad_norm"], stage
        final_eval = {k: v.hex() for r in rows if "loss" not in r and r["step"] == rows[-1]["step"]
                      for k, v in r.items() if k.startswith("eval/")}
        assert final_eval == want["eval"], stage
