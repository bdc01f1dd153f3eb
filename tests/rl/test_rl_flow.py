"""Stage kind `rl` and `flowlm rl filter` through the installed `flowlm` command, on a micro model.

Rewards: the prompt rows are IFEval-routed with constraints that random-looking text satisfies about
half the time (`length_constraints:number_words`, `punctuation:no_comma`, ...), so a barely pretrained
micro model gets mixed groups and the policy gradient is not zero. The `kill -9` test uses the source's
test-only hook `FLOWLM_RL_KILL_AT_POSITION` (see `flowlm.rl.source`).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cli_entry import flowlm_command

REPO = Path(__file__).resolve().parents[2]

CONSTRAINTS = [
    ("length_constraints:number_words", {"relation": "at least", "num_words": 3}),
    ("punctuation:no_comma", {}),
    ("change_case:english_lowercase", {}),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 3}),
]
MICRO = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128,
         "sliding_window": 32}
RL = {"kind": "rl", "init": "pretrain", "steps": 4, "seq_len": 160, "checkpoint_every": 2, "keep_last": 4,
      "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 10, "max_draws": 4},
      "optim": {"lr": 3.0e-3}}


def prompt_rows(n: int) -> list[dict]:
    out = []
    for i in range(n):
        iid, kw = CONSTRAINTS[i % len(CONSTRAINTS)]
        out.append({"id": f"if{i}", "prompt": f"Write about topic {i}.", "dataset": "ifeval",
                    "ground_truth": {"instruction_id_list": [iid], "kwargs": [kw]}})
    return out


def recipe(prompts: Path) -> dict:
    return {
        "name": "rl", "threads": 1, "model": {"preset": "tiny", "overrides": MICRO},
        "eval": {"max_items": 4, "heldout_docs": 2, "tasks": ["prose"]},
        "stages": {
            "corpus": {"pretrain_bytes": 60000, "midtrain_bytes": 20000, "long_docs": 2, "curate": None},
            "tokenizer": {"vocab_size": 512, "train_bytes": 60000},
            "pretrain": {"data": "pretrain", "steps": 3, "seq_len": 128, "batch_size": 4, "checkpoint_every": 3},
            "rl": {**RL, "prompts": str(prompts)},
        },
    }


def flowlm(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([*flowlm_command(), *args], capture_output=True, text=True, timeout=900, env=full_env,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"flowlm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Corpus, tokenizer and a 3-step pretrain, built once; the prompts file beside; `recipe.yaml`."""
    d = tmp_path_factory.mktemp("rl_flow")
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in prompt_rows(12)))
    (d / "recipe.yaml").write_text(yaml.safe_dump(recipe(prompts), sort_keys=False))
    flowlm("train", str(d / "recipe.yaml"), "--stage", "corpus", "--stage", "tokenizer", "--stage", "pretrain",
           "--run-dir", str(d / "run"), "--no-progress")
    return d


@pytest.fixture(scope="module")
def straight(base, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rl_straight") / "run"
    shutil.copytree(base / "run", d)
    flowlm("train", str(base / "recipe.yaml"), "--stage", "rl", "--run-dir", str(d), "--no-progress")
    return d


def steps(run_dir: Path, stage: str = "rl") -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / stage / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def rollouts(run_dir: Path, stage: str = "rl") -> list[dict]:
    return [json.loads(line) for line in (run_dir / stage / "rollouts.jsonl").read_text().splitlines()]


def test_rl_stage_trains_on_informative_groups_and_records_its_rollouts(straight):
    st = json.loads((straight / "flow.json").read_text())["stages"]["rl"]
    assert st["status"] == "done" and st["config"]["batch_size"] == 8
    assert st["config"]["objective"]["name"] == "grpo" and st["config"]["objective"]["clip_high"] == 0.272
    recs = steps(straight)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs:
        assert r["informative_share"] == 1.0 and r["groups_mixed"] >= 2 and r["filtered"] + r["surplus"] == r["resampled"]
        assert 0 < r["loss_tokens"] <= 8 * 10 and 0 <= r["reward"] <= 1 and r["entropy"] > 0
        assert r["mismatch/abs_diff_max"] < 1e-3 and r["mismatch/out_of_band"] == 0  # same fp32 weights
        assert r["grad_norm"] > 0
    assert "reward/ifeval" in recs[0]
    totals = st["metrics"]["rollouts"]
    assert totals["batches"] == 4 and totals["prompts"] == sum(r["prompts"] for r in recs)
    assert (straight / "rl" / "model" / "model.safetensors").exists()
    assert st["outputs"]["rollouts"] == "rl/rollouts.jsonl" and len(rollouts(straight)) == 4


def test_run_record_and_report_summarise_the_reward_curves(straight):
    """The stage record's `rl` summary is the per-step log's (one step per quarter here), and `flowlm report`
    prints it as the RL table."""
    from flowlm.rl.summary import rl_summary

    summary = json.loads((straight / "flow.json").read_text())["stages"]["rl"]["metrics"]["rl"]
    recs = steps(straight)
    assert summary == rl_summary(json.loads(x) for x in (straight / "rl" / "metrics.jsonl").read_text().splitlines())
    assert summary["steps"] == 4 and summary["by_quarter"]["reward"] == [r["reward"] for r in recs]
    assert summary["by_quarter"]["reward/ifeval"] == [r["reward/ifeval"] for r in recs]
    proc = subprocess.run([*flowlm_command(), "report", str(straight)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("│ rl ") and "ifeval" in line)
    assert " ".join(f"{r['reward']:.3g}" for r in recs) in row and f"ifeval {recs[0]['reward/ifeval']:.3g} ->" in row


def test_kill_9_then_resume_gives_the_same_losses_and_prompts(base, straight, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(base / "run", d)
    # position 3 is step 4's batch: steps 1-3 ran, the step-2 checkpoint is the newest
    proc = flowlm("train", str(base / "recipe.yaml"), "--stage", "rl", "--run-dir", str(d), "--no-progress",
                  check=False, env={"FLOWLM_RL_KILL_AT_POSITION": "3"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert json.loads((d / "flow.json").read_text())["stages"]["rl"]["status"] == "running"
    assert len(rollouts(d)) == 4  # position 3 was generated (and logged) before the kill
    flowlm("train", str(base / "recipe.yaml"), "--stage", "rl", "--run-dir", str(d), "--no-progress")
    resumed, uninterrupted = steps(d), steps(straight)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(uninterrupted, resumed):
        assert (a["loss"], a["grad_norm"], a["reward"], a["entropy"]) == (b["loss"], b["grad_norm"], b["reward"],
                                                                         b["entropy"])
    # no prompt replayed or lost: the same prompts drawn and trained at every position, once each
    assert [(r["position"], r["drawn"], r["trained"]) for r in rollouts(d)] == [
        (r["position"], r["drawn"], r["trained"]) for r in rollouts(straight)]


def fake_vllm_env(tmp_path: Path) -> dict[str, str]:
    """Environment under which a `flowlm` subprocess imports `tests/fake_vllm.py` as `vllm`."""
    shim = tmp_path / "shim" / "vllm"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("from tests.fake_vllm import *  # noqa: F401,F403\n")
    root = str(Path(__file__).resolve().parents[2])
    return {"PYTHONPATH": os.pathsep.join([str(shim.parent), root, os.environ.get("PYTHONPATH", "")])}


def test_rl_stage_with_backend_vllm_through_a_stand_in_for_vllm(base, tmp_path):
    """`rollout.backend: vllm` as a stage, with `tests/fake_vllm.py` importable as `vllm` in the subprocess
    (flowlm's native engine behind vLLM's calls): the stage trains, the engine took the policy before every
    batch (fp32 on both sides: no mismatch) and the exported checkpoint is gone afterwards."""
    d = tmp_path / "run"
    shutil.copytree(base / "run", d)
    raw = yaml.safe_load((base / "recipe.yaml").read_text())
    raw["stages"]["rl"]["steps"] = 2
    raw["stages"]["rl"]["rollout"]["backend"] = "vllm"
    (tmp_path / "vllm.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**fake_vllm_env(tmp_path), "TMPDIR": str(tmp)}
    flowlm("train", str(tmp_path / "vllm.yaml"), "--stage", "rl", "--run-dir", str(d), "--no-progress", env=env)
    st = json.loads((d / "flow.json").read_text())["stages"]["rl"]
    assert st["status"] == "done" and st["config"]["rollout"]["backend"] == "vllm"
    recs = steps(d)
    assert [r["step"] for r in recs] == [1, 2]
    assert all(r["mismatch/out_of_band"] == 0 and r["mismatch/abs_diff_max"] < 1e-3 for r in recs)
    assert not list(tmp.glob("flowlm-vllm-*"))  # the exported policy was removed


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_rl_stage_with_backend_vllm_and_no_vllm_is_one_line(base, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(base / "run", d)
    raw = yaml.safe_load((base / "recipe.yaml").read_text())
    raw["stages"]["rl"]["rollout"]["backend"] = "vllm"
    (tmp_path / "vllm.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = flowlm("train", str(tmp_path / "vllm.yaml"), "--stage", "rl", "--run-dir", str(d), "--no-progress",
                  check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "needs the 'vllm' package: pip install 'flowlm[vllm]'" in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def torchrun_train(recipe: Path, run_dir: Path, *stages: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`flowlm train RECIPE STAGES --run-dir RUN_DIR` under `torchrun --nproc_per_node 2` (gloo). Its temp dir
    is beside the run: a rank whose peer is killed writes its crash log there, not into the machine's /tmp."""
    tmp = run_dir.with_name(run_dir.name + "-tmp")
    tmp.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "flowlm.cli", "train",
           str(recipe), *stages, "--run-dir", str(run_dir), "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp), **(env or {})})


def torchrun_rl(recipe: Path, run_dir: Path, *, env: dict | None = None) -> subprocess.CompletedProcess:
    return torchrun_train(recipe, run_dir, "--stage", "rl", env=env)


def test_torchrun_learner_on_two_ranks_equals_one_process_and_resumes(base, straight, tmp_path):
    """The rl stage under `torchrun --nproc_per_node 2` (gloo, FSDP2): rank 0 generates with the gathered
    full weights, each rank trains half the groups. Same prompts and rollouts as one process, losses equal
    to float rounding; `kill -9` of rank 0 mid-stage, then the same command resumes without replaying or
    losing a prompt."""
    d = tmp_path / "run"
    shutil.copytree(base / "run", d)
    proc = torchrun_rl(base / "recipe.yaml", d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks, one = steps(d), steps(straight)
    assert [r["step"] for r in ranks] == [1, 2, 3, 4]
    assert [(r["position"], r["drawn"], r["trained"]) for r in rollouts(d)] == [
        (r["position"], r["drawn"], r["trained"]) for r in rollouts(straight)]
    for a, b in zip(one, ranks):
        assert a["reward"] == b["reward"] and a["loss_tokens"] == b["loss_tokens"] and a["prompts"] == b["prompts"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["mismatch/abs_diff_max"] < 1e-3  # the engine runs the gathered weights the learner trains
    # rank 0 killed at position 3 (steps 1-3 done, the step-2 checkpoint the newest), then the same command
    k = tmp_path / "killed"
    shutil.copytree(base / "run", k)
    proc = torchrun_rl(base / "recipe.yaml", k, env={"FLOWLM_RL_KILL_AT_POSITION": "3"})
    assert proc.returncode != 0
    proc = torchrun_rl(base / "recipe.yaml", k)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(r["position"], r["drawn"], r["trained"]) for r in rollouts(k)] == [
        (r["position"], r["drawn"], r["trained"]) for r in rollouts(d)]
    for a, b in zip(steps(d), steps(k)):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6) and a["reward"] == b["reward"]
    # rank 0 sums the curves up in the record; the resumed run's re-logged step counts once
    def summary(run: Path) -> dict:
        return json.loads((run / "flow.json").read_text())["stages"]["rl"]["metrics"]["rl"]
    assert summary(d)["by_quarter"]["reward"] == summary(straight)["by_quarter"]["reward"]
    assert summary(k)["steps"] == 4 and summary(k)["by_quarter"]["reward"] == summary(d)["by_quarter"]["reward"]


def test_torchrun_minibatches_equal_one_process_and_resume_between_two(base, tmp_path):
    """minibatches 2 under `torchrun --nproc_per_node 2`: each minibatch's groups split over the ranks, the
    old-policy pass collective (every rank on its share). Same prompts, rewards and losses as one process;
    `kill -9` of rank 0 with the newest checkpoint between two minibatches, then the same command: the rest
    of that batch comes from the checkpoint and every loss equals the uninterrupted run's."""
    spec = yaml.safe_load((base / "recipe.yaml").read_text())
    spec["stages"]["rl"].update({"steps": 6, "checkpoint_every": 3})
    spec["stages"]["rl"]["rollout"].update({"prompts_per_step": 4, "minibatches": 2})
    rec = tmp_path / "recipe.yaml"
    rec.write_text(yaml.safe_dump(spec, sort_keys=False))
    one, d, k = tmp_path / "one", tmp_path / "ranks", tmp_path / "killed"
    for run in (one, d, k):
        shutil.copytree(base / "run", run)
    flowlm("train", str(rec), "--stage", "rl", "--run-dir", str(one), "--no-progress")
    proc = torchrun_rl(rec, d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(r["position"], r["drawn"], r["trained"]) for r in rollouts(d)] == [
        (r["position"], r["drawn"], r["trained"]) for r in rollouts(one)]
    ranks = steps(d)
    assert [r["step"] for r in ranks] == [1, 2, 3, 4, 5, 6]
    assert ["reward" in r for r in ranks] == [True, False] * 3  # statistics on each batch's first step
    for a, b in zip(steps(one), ranks):
        assert a.get("reward") == b.get("reward") and a["loss_tokens"] == b["loss_tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["ratio_max"] == pytest.approx(a["ratio_max"], rel=1e-4)
    assert all(r["ratio_max"] == pytest.approx(1.0, abs=1e-4) for r in ranks[0::2])  # the collective old pass
    # killed while generating batch 2 (steps 1-4 done); the newest checkpoint is step 3, mid batch 1
    proc = torchrun_rl(rec, k, env={"FLOWLM_RL_KILL_AT_POSITION": "2"})
    assert proc.returncode != 0
    assert sorted(p.name for p in (k / "rl" / "checkpoints").glob("step_*")) == ["step_0000003"]
    proc = torchrun_rl(rec, k)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(r["position"], r["drawn"], r["trained"]) for r in rollouts(k)] == [
        (r["position"], r["drawn"], r["trained"]) for r in rollouts(d)]
    for a, b in zip(ranks, steps(k)):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6) and a.get("reward") == b.get("reward")


# `flowlm train --objective grpo` settings that keep a run to seconds
SMALL_GRPO = ("--no-progress", "stages.grpo.steps=2", "stages.grpo.seq_len=160", "stages.grpo.rollout.prompts_per_step=2",
              "stages.grpo.rollout.group_size=4", "eval.max_items=2", "eval.heldout_docs=1", "eval.tasks=[prose]",
              "threads=1")


def test_train_objective_grpo_on_a_prompts_file_runs_an_rl_stage(base, tmp_path):
    """`flowlm train --objective grpo --init CKPT --data prompts.jsonl`: the direct command builds an rl stage
    with the file as its prompts; more than one --data file is a one-line error."""
    init, prompts = base / "run" / "pretrain" / "model", base / "prompts.jsonl"
    d = tmp_path / "run"
    flowlm("train", "--objective", "grpo", "--init", str(init), "--data", str(prompts), "--run-dir", str(d),
           *SMALL_GRPO, "stages.grpo.rollout.max_new_tokens=10", "stages.grpo.rollout.max_draws=2")
    record = json.loads((d / "flow.json").read_text())["stages"]["grpo"]
    assert record["kind"] == "rl" and record["status"] == "done"
    trained = steps(d, "grpo")
    assert [r["step"] for r in trained] == [1, 2] and all("reward" in r for r in trained)
    ids = {json.loads(x)["id"] for x in prompts.read_text().splitlines()}
    drawn = [i for r in rollouts(d, "grpo") for i in r["drawn"]]
    assert drawn and set(drawn) <= ids  # the prompts came from the file
    proc = flowlm("train", "--objective", "grpo", "--init", str(init), "--data", str(prompts), "--data",
                  str(prompts), "--run-dir", str(tmp_path / "two"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--objective grpo: one --data file of prompt rows (JSONL), got 2" in proc.stderr


def test_grpo_reads_a_benchmark_format_file_and_its_fingerprint_follows_the_file(base, tmp_path):
    """`--data gsm8k=FILE` (a stage's `prompts: gsm8k=FILE`): GSM8K-format rows become prompt rows as `flowlm rl
    prompts` makes them; the file's content is in the fingerprint (a rerun skips, an edit of the file reruns)."""
    init = base / "run" / "pretrain" / "model"
    train = tmp_path / "train.jsonl"
    qa = [("Tom has 3 apples and buys 4 more. How many?", "3 + 4 = 7\n#### 7"), ("What is 6 times 2?", "#### 12"),
          ("Ann has 9 pens and loses 2. How many?", "9 - 2 = 7\n#### 7"), ("What is 5 plus 5?", "#### 10")]
    train.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in qa))
    d = tmp_path / "run"
    args = ("train", "--objective", "grpo", "--init", str(init), "--data", f"gsm8k={train}", "--run-dir", str(d),
            *SMALL_GRPO, "stages.grpo.rollout.max_new_tokens=10", "stages.grpo.rollout.max_draws=1")
    first = flowlm(*args)
    record = json.loads((d / "flow.json").read_text())["stages"]["grpo"]
    assert record["status"] == "done" and record["config"]["prompts"] == f"gsm8k={train.resolve()}"
    assert str(train.resolve()) in record["inputs"]
    drawn = {i for r in rollouts(d, "grpo") for i in r["drawn"]}
    assert drawn and drawn <= {f"gsm8k-{i}" for i in range(4)}
    assert "warning" not in first.stderr  # a training split: no contamination warning
    assert "[skip] grpo" in flowlm(*args).stderr
    train.write_text(train.read_text() + json.dumps({"question": "What is 1 plus 1?", "answer": "#### 2"}) + "\n")
    assert "[run ] grpo" in flowlm(*args).stderr
    proc = flowlm(*args[:6], f"gsm8k={tmp_path / 'none.jsonl'}", *args[7:], check=False)
    assert proc.returncode == 2 and "no such benchmark file (suite gsm8k)" in proc.stderr and "Traceback" not in proc.stderr


def test_train_objective_grpo_from_a_hugging_face_checkpoint(base, tmp_path):
    """An HF checkpoint of another family (a tiny Qwen3) runs through the adapter: the rollout engine takes the
    learner's weights, named under the adapter's "hf.", at every sync (the first sync failed until 2026-12-06)."""
    from transformers import AutoTokenizer

    from tests.hf_models import save_tiny_qwen3

    prompts = base / "prompts.jsonl"
    init = save_tiny_qwen3(tmp_path / "qwen", AutoTokenizer.from_pretrained(base / "run" / "pretrain" / "model"))
    d = tmp_path / "run"
    flowlm("train", "--objective", "grpo", "--init", str(init), "--data", str(prompts), "--run-dir", str(d),
           *SMALL_GRPO, "stages.grpo.rollout.max_new_tokens=6", "stages.grpo.rollout.max_draws=1")
    trained = steps(d, "grpo")
    assert [r["step"] for r in trained] == [1, 2] and all(r["rollout_tokens"] > 0 for r in trained)
    assert (d / "grpo" / "model" / "model.safetensors").exists()


def test_rl_zero_stage_plain_builtin_prompts_with_coin_rewards(base, tmp_path):
    """RL-Zero's spurious-reward control as a stage: built-in counting prompts in the plain template (no chat
    markup; completions stop at the next '\\nQuestion:'), advantages from coins, the logged reward the
    verifiers'."""
    d = tmp_path / "run"
    shutil.copytree(base / "run", d)
    raw = yaml.safe_load((base / "recipe.yaml").read_text())
    del raw["stages"]["rl"]  # (a recipe's later stages would need the earlier ones done)
    raw["stages"]["rl_zero"] = {**RL, "steps": 2, "prompts": "builtin", "n_prompts": 40, "tasks": ["counting"],
                                "prompt_format": "plain",
                                "rollout": {**RL["rollout"], "thinking": False, "reward": "random",
                                            "mask_truncated": True}}
    (tmp_path / "zero.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    flowlm("train", str(tmp_path / "zero.yaml"), "--stage", "rl_zero", "--run-dir", str(d), "--no-progress")
    st = json.loads((d / "flow.json").read_text())["stages"]["rl_zero"]
    assert st["status"] == "done" and st["config"]["rollout"]["stop"] == ["\nQuestion:"]
    assert st["metrics"]["rollouts"]["prompt_rows"] == 40
    recs = [json.loads(x) for x in (d / "rl_zero" / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "loss" in r]
    assert [r["step"] for r in recs] == [1, 2]
    # the barely trained model almost never counts right, yet coins make groups informative
    assert all(r["informative_share"] == 1.0 and r["reward"] <= 0.25 for r in recs)
    assert "reward/math" in recs[0]


def test_instructions_and_a_reward_model_stage_join_the_rule_rewards(base, tmp_path):
    """Instruct RL's IF domain and Qwen3 general RL's model reward as stage settings: half the built-in
    prompts carry an IFEval instruction (scored with ifeval beside math), and every prompt is also scored
    by a Bradley-Terry reward model trained in an earlier stage of the same recipe."""
    d = tmp_path / "run"
    shutil.copytree(base / "run", d)
    raw = yaml.safe_load((base / "recipe.yaml").read_text())
    del raw["stages"]["rl"]
    raw["stages"]["pairs"] = {"kind": "pairs", "n_prompts": 8, "seed": 1, "strong": "procedural", "weak": "weak"}
    raw["stages"]["rm"] = {"kind": "train", "init": "pretrain", "data": "pairs", "steps": 2, "seq_len": 512,
                           "batch_size": 2, "objective": {"name": "reward_model"}, "optim": {"lr": 1.0e-4}}
    raw["stages"]["rl_mixed"] = {**RL, "steps": 2, "prompts": "builtin", "n_prompts": 40, "tasks": ["counting"],
                                 "instructions": 0.5, "reward_model": "rm", "reward_model_weight": 0.5}
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    flowlm("train", str(tmp_path / "mixed.yaml"), "--stage", "pairs", "--stage", "rm", "--stage", "rl_mixed",
           "--run-dir", str(d), "--no-progress")
    st = json.loads((d / "flow.json").read_text())["stages"]["rl_mixed"]
    assert st["status"] == "done" and "rm" in st["inputs"]
    recs = [json.loads(x) for x in (d / "rl_mixed" / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "loss" in r]
    assert [r["step"] for r in recs] == [1, 2]
    domains = {k for r in recs for k in r if k.startswith("reward/")}
    assert domains <= {"reward/math+reward_model", "reward/ifeval+math+reward_model"} and domains
    # the reward model's sigmoid score is never 0 and differs between completions: every group is informative
    assert all(0 < r["reward"] < 1 and r["informative_share"] == 1.0 for r in recs)


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "gsm8k").is_dir(), reason="../shared/data is not present")
def test_eval_contamination_sees_an_rl_prompt_spec_and_only_the_models_ancestors(base, tmp_path):
    """An eval stage's contamination check reads the evaluated models' training data: RL on four GSM8K
    items (`prompts: gsm8k=FILE`) makes those items 100% contaminated for an eval of them (0% until
    2026-12-07: only the corpus stage was scanned); held-out built-in items stay at 0%; a data stage no
    evaluated model descends from (`pairs` here) is neither an input nor scanned."""
    items = tmp_path / "gsm8k_four.jsonl"
    with gzip.open(REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl.gz", "rt") as fh:
        items.write_text("".join(next(fh) for _ in range(4)))
    d = tmp_path / "run"
    shutil.copytree(base / "run", d)
    raw = yaml.safe_load((base / "recipe.yaml").read_text())
    del raw["stages"]["rl"]
    raw["stages"]["pairs"] = {"kind": "pairs", "n_prompts": 4, "seed": 1, "strong": "procedural", "weak": "weak"}
    raw["stages"]["rl_gsm"] = {**RL, "steps": 1, "seq_len": 512, "prompts": f"gsm8k={items}",
                               "rollout": {**RL["rollout"], "max_new_tokens": 4, "max_draws": 1}}
    raw["stages"]["evaluate"] = {"kind": "eval", "models": ["rl_gsm"], "suites": [f"gsm8k={items}", "counting"],
                                 "max_items": 4, "max_new_tokens": 4, "temperature": 0.0, "workers": 0}
    (tmp_path / "gsm.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    flowlm("train", str(tmp_path / "gsm.yaml"), "--stage", "pairs", "--stage", "rl_gsm", "--stage", "evaluate",
           "--run-dir", str(d), "--no-progress")
    st = json.loads((d / "flow.json").read_text())["stages"]["evaluate"]
    results = st["metrics"]["results"]["rl_gsm"]
    assert results["gsm8k"]["contamination"] == 1.0 and results["counting"]["contamination"] == 0.0
    assert {"rl_gsm", "corpus", str(items.resolve())} <= set(st["inputs"]) and "pairs" not in st["inputs"]
    scanned = json.loads((d / "evaluate" / "results.json").read_text())["settings"]["corpora"]
    assert f"gsm8k={items}" in scanned and not any("pairs" in f for f in scanned)


def test_rl_filter_keeps_hard_prompts_with_their_pass_rate(base, straight, tmp_path):
    out = tmp_path / "kept.jsonl"
    model = straight / "rl" / "model"
    proc = flowlm("rl", "filter", "--model", str(model), "--file", str(base / "prompts.jsonl"), "-k", "4",
                  "--max-pass-rate", "0.5", "--set", "max_new_tokens=10", "--out", str(out))
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(0 <= r["pass_rate"] <= 0.5 and r["dataset"] == "ifeval" for r in kept)
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("rl filter: 12 prompts x 4 samples") and f"kept {len(kept)}," in line
    easy = int(line.split("too easy (> 0.5) ")[1].split(",")[0])
    assert easy + len(kept) == 12 and easy > 0  # some constraints are easy for random text
    # the same rows again give the same pass rates (seeded sampling)
    again = flowlm("rl", "filter", "--model", str(model), "--file", str(out), "-k", "4", "--set", "max_new_tokens=10")
    assert [json.loads(x)["pass_rate"] for x in again.stdout.splitlines()] == [r["pass_rate"] for r in kept]
    # --set backend=vllm through the stand-in (the native engine behind vLLM's calls, same seeds): the same rates
    via = flowlm("rl", "filter", "--model", str(model), "--file", str(out), "-k", "4", "--set", "max_new_tokens=10",
                 "--set", "backend=vllm", env=fake_vllm_env(tmp_path))
    assert via.stdout == again.stdout
    # --exclude: the prompts an SFT file holds are left out before sampling, and counted
    from flowlm.verify.rows import prompt_messages

    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"messages": [*prompt_messages(r), {"role": "assistant", "content": "x"}]})
                           + "\n" for r in kept[:2]))
    fewer = flowlm("rl", "filter", "--model", str(model), "--file", str(out), "-k", "4", "--set", "max_new_tokens=10",
                   "--exclude", str(sft))
    assert fewer.stdout.splitlines() == again.stdout.splitlines()[2:]
    assert f"rl filter: {len(kept) - 2} prompts" in fewer.stderr and ", excluded (in --exclude) 2" in fewer.stderr
    proc = flowlm("rl", "filter", "--model", str(model), "--file", str(out), "--exclude", str(out), check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
        f"error: rl filter: every prompt is in --exclude ({out})")


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "gsm8k").is_dir(), reason="../shared/data is not present")
def test_rl_prompts_of_gsm8k_train_feed_rl_filter(straight, tmp_path):
    """A user's RLVR start: GSM8K's training file in its published format -> `flowlm rl prompts` -> `flowlm rl
    filter` samples and scores every row with the gsm8k verifier (the micro model solves none: all kept at 0)."""
    rows = tmp_path / "gsm8k.jsonl"
    flowlm("rl", "prompts", "--suite", f"gsm8k={REPO.parent / 'shared' / 'data' / 'gsm8k' / 'train.jsonl.gz'}",
           "--max-items", "3", "--out", str(rows))
    proc = flowlm("rl", "filter", "--model", str(straight / "rl" / "model"), "--file", str(rows), "-k", "2",
                  "--set", "max_new_tokens=4")
    kept = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [r["id"] for r in kept] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"] and all(r["pass_rate"] == 0 for r in kept)
    assert "3 prompts x 2 samples" in proc.stderr and "unsampled 0, verifier errors 0" in proc.stderr


def test_rl_filter_bad_input_is_one_line_naming_file_and_line(straight, tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = prompt_rows(2)
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "no verifier routing"}) + "\n")
    proc = flowlm("rl", "filter", "--model", str(straight / "rl" / "model"), "--file", str(bad), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"{bad}:2:" in errors[0] and "dataset" in errors[0], proc.stderr
    bad.write_text(json.dumps(rows[0]) + "\n{not json\n")
    proc = flowlm("rl", "filter", "--model", str(straight / "rl" / "model"), "--file", str(bad), check=False)
    assert proc.returncode == 1 and f"{bad}:2" in proc.stderr and "Traceback" not in proc.stderr
    proc = flowlm("rl", "filter", "--model", str(tmp_path / "nope"), "--file", str(bad), check=False)
    assert proc.returncode == 1 and "not a checkpoint directory" in proc.stderr


def test_rl_stage_and_filter_with_tools_through_the_cli(base, tmp_path):
    """`rollout.tools` in an rl stage (mode async) and `--set tools=[...]` in `flowlm rl filter`: the tools are
    offered (the micro model never calls one: `tests/tools/test_tool_rollouts.py` runs calls), the calls are
    logged per step, and an unknown tool is a one-line usage error in both."""
    d = tmp_path / "run"
    shutil.copytree(base / "run", d)
    tools = ("stages.rl.rollout.tools=[calculator]", "stages.rl.rollout.mode=async", "stages.rl.seq_len=512")
    flowlm("train", str(base / "recipe.yaml"), "--stage", "rl", "--run-dir", str(d), "--no-progress", *tools)
    trained = steps(d)
    assert len(trained) == 4 and all(r["tool_calls"] == 0.0 and r["tool_errors"] == 0.0 for r in trained)
    proc = flowlm("train", str(base / "recipe.yaml"), "--stage", "rl", "--run-dir", str(tmp_path / "bad"),
                  "stages.rl.rollout.tools=[search]", check=False)
    assert proc.returncode == 2 and "unknown tool 'search'; built-in tools: calculator, python" in proc.stderr
    model = d / "rl" / "model"
    kept = flowlm("rl", "filter", "--model", str(model), "--file", str(base / "prompts.jsonl"), "-k", "2", "--set",
                  "max_new_tokens=10", "--set", "max_pass_rate=1", "--set", "tools=[calculator]")
    assert len(kept.stdout.splitlines()) == 12 and "12 prompts x 2 samples" in kept.stderr
    proc = flowlm("rl", "filter", "--model", str(model), "--file", str(base / "prompts.jsonl"), "--set",
                  "tools=[search]", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "unknown tool 'search'" in proc.stderr
    # function-calling rows with their own functions (BFCL's format): to prompt rows, then sampled and scored
    from tests.eval.test_bfcl import write_bfcl

    bfcl, rows = write_bfcl(tmp_path / "bfcl"), tmp_path / "bfcl_rows.jsonl"
    made = flowlm("rl", "prompts", "--suite", f"bfcl={bfcl}", "--out", str(rows))
    assert "holds evaluation items" in made.stderr
    assert all(json.loads(x)["tools"] for x in rows.read_text().splitlines())
    scored = flowlm("rl", "filter", "--model", str(model), "--file", str(rows), "-k", "2", "--set",
                    "max_new_tokens=10", "--set", "max_pass_rate=1")
    assert [json.loads(x)["pass_rate"] for x in scored.stdout.splitlines()] == [0.0, 0.0]
    both = flowlm("rl", "filter", "--model", str(model), "--file", str(rows), "--set", "tools=[calculator]",
                  check=False)
    assert both.returncode == 2 and "offers its own functions" in both.stderr
