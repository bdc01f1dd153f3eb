"""`flowlm ablate`: arms of one recipe that share their unchanged stages, compared side by side."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from flowlm.errors import ConfigError
from flowlm.flow.ablate import arm_numbers, comparison, parse_arms
from tests.flow.test_post_flow import BASE, flowlm

RECIPE = {**BASE, "name": "ab", "stages": {
    **{k: BASE["stages"][k] for k in ("corpus", "tokenizer", "pretrain", "sft_data")},
    "sft": {"kind": "train", "init": "pretrain", "data": "sft_data", "objective": "sft", "steps": 3, "seq_len": 512,
            "batch_size": 2}}}


def test_arms_parse_in_order_and_bad_specs_are_one_line():
    assert parse_arms(["base", "hi:a.b=1", "hi:c=2", "lo:a.b=0"]) == {"base": [], "hi": ["a.b=1", "c=2"],
                                                                     "lo": ["a.b=0"]}
    for bad, msg in ((["base"], "at least two arms"), (["base", "x/y:a=1"], "arm name"),
                     (["base", "hi:lr"], "key=value")):
        with pytest.raises(ConfigError, match=msg):
            parse_arms(bad)


def test_comparison_rows_hand_checked():
    rows = comparison({"base": {"a": 1.0, "b": 2.0}, "hi": {"a": 1.5}, "lo": {"a": 0.5, "b": 2.5, "c": 1.0}})
    assert rows == [
        {"key": "a", "values": {"base": 1.0, "hi": 1.5, "lo": 0.5}, "delta": {"hi": 0.5, "lo": -0.5}},
        {"key": "b", "values": {"base": 2.0, "hi": None, "lo": 2.5}, "delta": {"hi": None, "lo": 0.5}},
        {"key": "c", "values": {"base": None, "hi": None, "lo": 1.0}, "delta": {"hi": None, "lo": None}}]


def test_arm_numbers_read_losses_bpb_evals_and_rewards():
    record = {"stages": {
        "pretrain": {"metrics": {"final_loss": 2.5, "eval": {"bpb": 1.25}}},
        "evaluate": {"metrics": {"results": {"sft": {"builtin": {"pass@1": 0.05, "maj@4": 0.1}}}}},
        "rl": {"metrics": {"final_loss": 0.0, "rl": {"by_quarter": {"reward": [0.1, 0.2, None, 0.4]}}}},
        "trace": {"metrics": {"traces": {"sft": {"builtin": {"long_share": 0.97, "longest": 31}},
                                         "base": {"skipped": "no token store"}}}},
        "corpus": {"metrics": {"docs": 10}}}}
    assert arm_numbers(record) == {"pretrain/final_loss": 2.5, "pretrain/bpb": 1.25,
                                   "evaluate/sft/builtin/pass@1": 0.05, "rl/final_loss": 0.0,
                                   "rl/reward_last_quarter": 0.4, "trace/sft/builtin/long_share": 0.97}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_arms_share_unchanged_stages_and_are_compared(tmp_path):
    (tmp_path / "ab.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    root = tmp_path / "abl"
    bad = flowlm("ablate", str(tmp_path / "ab.yaml"), "--arm", "base", "--arm", "hi:stages.sft.optim.lrr=1e-2",
                 "--run-dir", str(root), check=False)
    assert bad.returncode == 2 and "lrr" in bad.stderr and bad.stderr.count("\n") == 1 and not root.exists()
    args = ["ablate", str(tmp_path / "ab.yaml"), "--arm", "base", "--arm", "hi:stages.sft.optim.lr=1e-2",
            "--run-dir", str(root), "--no-progress"]
    proc = flowlm(*args)
    assert "arm 'hi' in" in proc.stderr and "seeded with 5 stages of 'base'" in proc.stderr
    hi_log = proc.stderr.split("arm 'hi'")[1]
    for stage in ("corpus", "tokenizer", "pretrain", "sft_data"):
        assert f"[skip] {stage}: unchanged" in hi_log
    assert "[run ] sft (train)" in hi_log
    result = json.loads((root / "ablation.json").read_text())
    assert result["shared"] == {"hi": ["corpus", "tokenizer", "pretrain", "sft_data"]}
    rows = {r["key"]: r for r in result["rows"]}
    assert rows["pretrain/final_loss"]["delta"]["hi"] == 0.0  # the one shared pretraining run
    sft = rows["sft/final_loss"]
    assert sft["values"]["base"] != sft["values"]["hi"]
    assert sft["delta"]["hi"] == pytest.approx(sft["values"]["hi"] - sft["values"]["base"])
    assert "sft/final_loss" in proc.stdout
    # shared files are hard links; the rerun stage wrote its own and left the baseline's alone
    base_model, hi_model = root / "base" / "sft" / "model" / "model.safetensors", root / "hi" / "sft" / "model" / "model.safetensors"
    assert (root / "hi" / "pretrain" / "model" / "model.safetensors").stat().st_nlink >= 2
    assert hi_model.stat().st_nlink == 1 and digest(base_model) != digest(hi_model)
    for arm in ("base", "hi"):
        assert (root / arm / "report.html").is_file()
    page = (root / "ablation.html").read_text()
    assert 'href="hi/report.html"' in page and "shared with base: corpus, tokenizer, pretrain, sft_data" in page
    before = digest(base_model)
    again = flowlm(*args)  # a rerun: every stage of both arms is unchanged
    assert again.stderr.count("[run ]") == 0 and digest(base_model) == before
