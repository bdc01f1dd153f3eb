"""Post-training stages in a flow, through the installed `flowlm` command: cold-start data -> SFT (epochs)
-> delta pairs -> DPO and a reward model; early stopping; the LR sweep with its soup; `flowlm train
--objective` on user files. A micro model keeps every stage to seconds."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cli_entry import flowlm_command

BASE = {
    "name": "post",
    "threads": 1,
    "model": {"preset": "tiny", "overrides": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                                              "intermediate_size": 128, "sliding_window": 32}},
    "eval": {"max_items": 4, "heldout_docs": 2, "tasks": ["prose"]},
    "stages": {
        "corpus": {"pretrain_bytes": 60000, "midtrain_bytes": 20000, "long_docs": 2, "curate": None},
        "tokenizer": {"vocab_size": 512, "train_bytes": 60000},
        "pretrain": {"data": "pretrain", "steps": 3, "seq_len": 128, "batch_size": 4, "checkpoint_every": 3},
        "sft_data": {"kind": "coldstart", "n_prompts": 24, "config": {"n": 2, "no_think_fraction": 0.25},
                     "teacher_settings": {"error_rate": 0.3}},
        "sft": {"kind": "train", "init": "pretrain", "data": "sft_data", "objective": "sft", "epochs": 1,
                "seq_len": 512, "batch_size": 2, "checkpoint_every": 100, "optim": {"lr": 1.0e-3}},
        "dpo_pairs": {"kind": "pairs", "n_prompts": 12, "seed": 1, "strong": "procedural", "weak": "weak"},
        "dpo": {"kind": "train", "init": "sft", "data": "dpo_pairs", "seq_len": 512, "batch_size": 2,
                "objective": {"name": "dpo", "beta": 0.1, "loss_type": "dpo"}, "optim": {"lr": 1.0e-4}},
        "rm": {"kind": "train", "init": "sft", "data": "dpo_pairs", "seq_len": 512, "batch_size": 2,
               "objective": {"name": "reward_model", "center_coef": 0.01}, "optim": {"lr": 1.0e-4}},
        "distill": {"kind": "train", "init": "pretrain", "data": "sft_data", "steps": 2, "seq_len": 512,
                    "batch_size": 2, "objective": {"name": "distill", "teacher": "sft", "divergence": "reverse_kl"},
                    "on_policy": {"max_new_tokens": 12, "temperature": 1.0}, "optim": {"lr": 1.0e-4}},
        "distill_off": {"kind": "train", "init": "pretrain", "data": "sft_data", "steps": 2, "seq_len": 512,
                        "batch_size": 2, "objective": {"name": "distill", "teacher": "sft"}, "optim": {"lr": 1.0e-4}},
    },
}


def flowlm(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*flowlm_command(), *args], capture_output=True, text=True, timeout=900, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"flowlm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def post_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("post")
    flowlm("run", str(write_recipe(d / "post.yaml", BASE)), "--run-dir", str(d / "run"), "--no-progress")
    return d / "run"


def stages(run_dir: Path) -> dict:
    return json.loads((run_dir / "flow.json").read_text())["stages"]


def test_eval_contamination_scans_the_sft_rows_its_model_was_trained_on(post_run, tmp_path):
    """An eval stage's contamination check scans the data stages its models descend from: items made from
    the SFT rows read 100% for the SFT model (the corpus alone: 0%, as until 2026-12-07), and the stage
    declares `sft_data` (an ancestor), not `dpo_pairs` (no evaluated model descends from it)."""
    d = tmp_path / "run"
    shutil.copytree(post_run, d)
    rows = [json.loads(line) for line in (post_run / "sft_data" / "rows.jsonl").read_text().splitlines()]
    long = [r for r in rows if r["task"] == "word_problem"][:3]  # long enough to index
    leak = tmp_path / "leak.jsonl"
    leak.write_text("".join(json.dumps({"id": f"leak{i}", "messages": r["messages"][:1], "dataset": r["dataset"],
                                        "ground_truth": r["ground_truth"]}) + "\n" for i, r in enumerate(long)))
    recipe = {**BASE, "stages": {**BASE["stages"], "evaluate": {
        "kind": "eval", "models": ["sft"], "suites": [f"jsonl={leak}", "counting"], "max_items": 3,
        "max_new_tokens": 4, "temperature": 0.0, "workers": 0}}}
    flowlm("train", str(write_recipe(tmp_path / "post.yaml", recipe)), "--stage", "evaluate", "--run-dir", str(d),
           "--no-progress")
    st = stages(d)["evaluate"]
    assert len(long) == 3 and st["metrics"]["results"]["sft"]["jsonl"]["contamination"] == 1.0
    assert st["metrics"]["results"]["sft"]["counting"]["contamination"] == 0.0
    assert "sft_data" in st["inputs"] and "dpo_pairs" not in st["inputs"]
    assert "sft_data/rows.jsonl" in json.loads((d / "evaluate" / "results.json").read_text())["settings"]["corpora"]


def test_coldstart_accounts_for_every_candidate_and_feeds_sft(post_run):
    st = stages(post_run)
    acc = json.loads((post_run / "sft_data" / "accounting.json").read_text())
    cands = acc["candidates"]
    dropped = sum(v["docs"] for v in cands["dropped"].values())
    assert cands["in"]["docs"] == 24 * 2 == cands["kept"]["docs"] + dropped
    assert dropped > 0  # error_rate 0.3 makes wrong / repetitive / guessed candidates the filters must catch
    rows = [json.loads(line) for line in (post_run / "sft_data" / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == st["sft_data"]["metrics"]["rows"] == cands["kept"]["docs"]
    assert any(r["messages"][0]["content"].endswith("/no_think") for r in rows)
    assert all(r["messages"][-1]["reasoning_content"] == "" for r in rows if r["messages"][0]["content"].endswith("/no_think"))


def test_sft_epochs_set_the_steps_and_the_model_is_exported(post_run):
    from flowlm.data.pack import PackedDataset
    from flowlm.data.store import TokenStore

    sft = stages(post_run)["sft"]
    per_epoch = len(PackedDataset(TokenStore.open(post_run / "sft_data" / "store"), 512, seed=0)) // 2
    assert sft["metrics"]["planned_steps"] == math.ceil(1 * per_epoch) == sft["metrics"]["steps"]
    assert (post_run / "sft" / "model" / "config.json").exists()
    rows = [json.loads(line) for line in (post_run / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["sequences"] >= 1 for r in rows if "loss" in r)


def test_dpo_trains_on_the_pairs_with_a_cached_reference(post_run):
    st = stages(post_run)
    n_pairs = st["dpo_pairs"]["metrics"]["rows"]
    assert n_pairs >= 2
    assert st["dpo"]["metrics"]["planned_steps"] == n_pairs // 2  # default 1 epoch, 2 pairs per step
    caches = list((post_run / "dpo" / "reference_cache").glob("dpo_ref_logps-*.pt"))
    assert len(caches) == 1
    rows = [json.loads(line) for line in (post_run / "dpo" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if "loss" in r)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1


@pytest.mark.parametrize("stage", ["dpo", "distill_off"])
def test_head_objectives_under_torchrun_two_ranks_equal_one_process(post_run, tmp_path, stage):
    """FSDP2 shards the LM head; DPO (answer positions) and distillation (the student's divergence to the
    teacher) project through it inside the model's forward (`head=`), so two gloo ranks train what one
    process trains (before, both used the head outside the forward: DPO crashed with "mixed torch.Tensor
    and DTensor")."""
    d = tmp_path / "run"
    shutil.copytree(post_run, d)
    shutil.rmtree(d / stage)
    flow = json.loads((d / "flow.json").read_text())
    del flow["stages"][stage]
    (d / "flow.json").write_text(json.dumps(flow))
    recipe = write_recipe(tmp_path / "post.yaml", BASE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "flowlm.cli", "train",
           str(recipe), "--stage", stage, "--run-dir", str(d), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]

    def steps(run: Path) -> list[dict]:
        return [r for r in map(json.loads, (run / stage / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

    one, two = steps(post_run), steps(d)
    assert [r["step"] for r in two] == [r["step"] for r in one] and len(one) >= 1
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def test_reward_model_stage_exports_a_sequence_classifier_the_verifier_loads(post_run):
    from transformers import AutoModelForSequenceClassification

    from flowlm.verify import verify

    model_dir = post_run / "rm" / "model"
    rm = AutoModelForSequenceClassification.from_pretrained(str(model_dir), local_files_only=True)
    assert rm.config.num_labels == 1 and rm.config.pad_token_id is not None
    verdict = verify("reward_model", "The answer is 4.", None, prompt="What is 2+2?", reward_model=str(model_dir))
    assert not verdict.reason.startswith("error"), verdict.reason
    rows = [json.loads(line) for line in (post_run / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert any("accuracy" in r for r in rows)


def test_on_policy_distillation_samples_the_student_and_is_reproducible(post_run, tmp_path):
    rows = [json.loads(line) for line in (post_run / "distill" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    # labels are the sampled completion tokens only: at most max_new_tokens per prompt, 2 prompts per step
    assert all(0 < r["loss_tokens"] <= 2 * 12 and 0 <= r["teacher_agreement"] <= 1 for r in steps)
    # the batches' statistics are the step's metrics: the sampled tokens are the labelled ones (none cut here)
    assert all(r["generated_tokens"] == r["loss_tokens"] and 0 <= r["truncated"] <= 2 for r in steps)
    # the same stage again (another name, another directory): the same samples, so the same losses
    d = tmp_path / "run"
    subprocess.run(["cp", "-r", str(post_run), str(d)], check=True)
    recipe = json.loads(json.dumps(BASE))
    recipe["stages"]["distill_again"] = BASE["stages"]["distill"]
    flowlm("train", str(write_recipe(tmp_path / "r.yaml", recipe)), "--stage", "distill_again", "--run-dir", str(d),
           "--no-progress")
    again = [json.loads(line) for line in (d / "distill_again" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in again if "loss" in r] == [r["loss"] for r in steps]


def test_early_stop_ends_the_stage_and_exports_the_step_it_stopped_at(post_run, tmp_path):
    d = tmp_path / "run"
    subprocess.run(["cp", "-r", str(post_run), str(d)], check=True)
    recipe = json.loads(json.dumps(BASE))
    recipe["stages"]["sft_es"] = {**BASE["stages"]["sft"], "steps": 12, "eval_every": 2, "checkpoint_every": 5,
                                  "early_stop": {"metric": "prose/bpb", "mode": "min", "patience": 1,
                                                 "min_delta": 1.0e9}}
    recipe["stages"]["sft_es"].pop("epochs")
    flowlm("train", str(write_recipe(tmp_path / "r.yaml", recipe)), "--stage", "sft_es", "--run-dir", str(d),
           "--no-progress")
    m = stages(d)["sft_es"]["metrics"]
    # no eval can improve by 1e9: the first comparison (step 2 vs step 0) stops the run
    assert m["early_stop"]["stopped_at"] == 2 and m["steps"] == 2 and m["early_stop"]["best_step"] == 0
    assert "step_0000002" in m["checkpoints_kept"]
    assert (d / "sft_es" / "model" / "model.safetensors").exists()


def test_lr_sweep_soups_the_best_runs_by_the_metric(post_run, tmp_path):
    d = tmp_path / "run"
    subprocess.run(["cp", "-r", str(post_run), str(d)], check=True)
    recipe = json.loads(json.dumps(BASE))
    train = {k: v for k, v in BASE["stages"]["sft"].items() if k != "kind"}
    recipe["stages"]["sweep"] = {"kind": "sweep", "lrs": [1.0e-4, 1.0e-3, 3.0e-3], "metric": "prose/bpb",
                                 "mode": "min", "soup_top": 2, "train": train}
    flowlm("train", str(write_recipe(tmp_path / "r.yaml", recipe)), "--stage", "sweep", "--run-dir", str(d),
           "--no-progress")
    m = stages(d)["sweep"]["metrics"]
    values = {r["lr"]: r["value"] for r in m["runs"]}
    assert sorted(values, key=values.get) == m["ranking"] and m["souped"] == m["ranking"][:2]
    assert "prose/bpb" in m["eval"] and (d / "sweep" / "model" / "config.json").exists()
    assert len({r["dir"] for r in m["runs"]}) == 3


def test_train_objective_on_user_files(post_run, tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}."},
                                                       {"role": "assistant", "content": f"{i}"}]}) for i in range(8)))
    init = post_run / "sft" / "model"
    flowlm("train", "--objective", "sft", "--init", str(init), "--data", str(chat), "--run-dir", str(tmp_path / "r"),
           "--no-progress", "stages.sft.seq_len=64", "stages.sft.batch_size=2", "eval.max_items=2",
           "eval.heldout_docs=1", "eval.tasks=[prose]", "threads=1")
    m = stages(tmp_path / "r")["sft"]["metrics"]
    assert m["steps"] == m["planned_steps"] >= 2  # 2 epochs by default
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": f"Say {i}.", "chosen": f"{i}", "rejected": f"{i + 1}"})
                               for i in range(4)))
    proc = flowlm("train", "--objective", "dpo", "--init", str(init), "--data", str(pairs), "--run-dir",
                  str(tmp_path / "d"), "--no-progress", "stages.dpo.seq_len=64", "stages.dpo.batch_size=2",
                  check=False)
    assert proc.returncode != 0 and "beta" in proc.stderr and "Traceback" not in proc.stderr  # β has no default
    # SimPO and ORPO: reference-free, so no reference pass and no cache; IPO: a reference, cached
    common = ["--no-progress", "stages.dpo.seq_len=64", "stages.dpo.batch_size=2", "eval.max_items=2",
              "eval.heldout_docs=1", "eval.tasks=[prose]", "threads=1"]
    for loss, run in (("simpo", "simpo"), ("orpo", "orpo"), ("ipo", "ipo")):
        flowlm("train", "--objective", "dpo", "--init", str(init), "--data", str(pairs), "--run-dir", str(tmp_path / run),
               f"stages.dpo.objective.loss_type={loss}", "stages.dpo.objective.beta=2", *common)
        steps = [json.loads(line) for line in (tmp_path / run / "dpo" / "metrics.jsonl").read_text().splitlines()
                 if "loss" in json.loads(line)]
        assert steps and all(st["grad_norm"] > 0 for st in steps)
        assert bool(list((tmp_path / run / "dpo").rglob("dpo_ref_logps-*.pt"))) == (loss == "ipo")
    proc = flowlm("train", "--objective", "dpo", "--init", str(init), "--data", str(pairs), "--run-dir",
                  str(tmp_path / "bad"), "stages.dpo.objective.loss_type=simpo", "stages.dpo.objective.beta=2",
                  f"stages.dpo.objective.reference={init}", *common, check=False)
    assert proc.returncode != 0 and "uses no reference model" in proc.stderr.strip().splitlines()[-1]


def test_train_objective_on_policy_distillation_samples_the_data_files_prompts(post_run, tmp_path):
    """`--objective distill` with on_policy: the --data JSONL holds prompts (it failed as a corpus without
    `text`, and the stage then found no prompts named 'data', until 2026-12-07)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Count to {i}."}) for i in range(6)))
    args = ["train", "--objective", "distill", "--init", str(post_run / "pretrain" / "model"), "--data", str(prompts),
            f"stages.distill.objective.teacher={post_run / 'sft' / 'model'}", "stages.distill.steps=2",
            "stages.distill.on_policy={max_new_tokens: 8}", "stages.distill.seq_len=128", "stages.distill.batch_size=2"]
    shown = yaml.safe_load(flowlm(*args, "--print-recipe").stdout)
    assert shown["stages"]["distill"]["data"] == str(prompts) and shown["stages"]["corpus"]["files"] == {}
    flowlm(*args, "--run-dir", str(tmp_path / "r"), "--no-progress", "eval.max_items=2", "eval.heldout_docs=1",
           "eval.tasks=[prose]", "threads=1")
    steps = [json.loads(line) for line in (tmp_path / "r" / "distill" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert [s["step"] for s in steps] == [1, 2] and all(0 < s["loss_tokens"] <= 2 * 8 for s in steps)
    proc = flowlm(*args, "--data", str(prompts), check=False)  # two files: which one holds the prompts?
    assert proc.returncode != 0 and "one --data JSONL of prompt rows" in proc.stderr.strip().splitlines()[-1]


def test_train_objective_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "narrator", "content": "x"}]}\n')
    model = tmp_path / "m"
    model.mkdir()
    proc = flowlm("train", "--objective", "sft", "--init", str(model), "--data", str(bad), "--run-dir",
                  str(tmp_path / "r"), "--no-progress", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    proc = flowlm("train", "--objective", "nope", "--init", str(model), "--data", str(bad), check=False)
    assert proc.returncode != 0 and "unknown objective 'nope'" in proc.stderr


def test_sft_and_dpo_on_a_checkpoint_whose_template_has_no_generation_markers(tmp_path):
    """A Hugging Face checkpoint (a tiny Qwen3) whose tokenizer has a plain ChatML template, as published
    templates do: SFT trains on the assistant tokens of every step (it trained on none, silently, with a
    loss of 0, until 2026-12-06), and DPO's answers carry labels."""
    from flowlm.data import builtin
    from flowlm.model.tokenizer import train_tokenizer
    from tests.hf_models import save_tiny_qwen3

    init = tmp_path / "qwen"
    tok = train_tokenizer([json.dumps(e["messages"]) for e in builtin.sft_examples(0, 200)], 400, init)
    tok.chat_template = ("{%- for m in messages -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}"
                         "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")
    save_tiny_qwen3(init, tok)
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}."},
                                                       {"role": "assistant", "content": f"{i}"}]}) for i in range(16)))
    common = ["--no-progress", "eval.max_items=2", "eval.heldout_docs=1", "eval.tasks=[prose]", "threads=1"]
    # the defaults (8 rows of 2,048 tokens a step) leave these few short rows less than one batch: say which keys
    proc = flowlm("train", "--objective", "sft", "--init", str(init), "--data", str(chat), "--run-dir",
                  str(tmp_path / "s"), *common, check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == (
        f"error: stage 'sft': {tmp_path / 's' / 'tokenizer' / 'stores' / 'data'} holds 1 packed rows of 2048 tokens, "
        "fewer than one batch (stages.sft.batch_size=8): lower stages.sft.batch_size or stages.sft.seq_len, or add data")
    flowlm("train", "--objective", "sft", "--init", str(init), "--data", str(chat), "--run-dir", str(tmp_path / "s"),
           "stages.sft.seq_len=64", "stages.sft.batch_size=2", *common)
    steps = [json.loads(line) for line in (tmp_path / "s" / "sft" / "metrics.jsonl").read_text().splitlines()
             if line.strip() and "loss" in json.loads(line)]
    assert steps and all(s["loss_tokens"] > 0 and s["loss"] > 0 for s in steps)
    # the labels are each answer's tokens and its <|im_end|>, nothing else, in each of the 2 epochs
    answers = sum(len(tok(str(i), add_special_tokens=False)["input_ids"]) + 1 for i in range(16))
    assert sum(s["loss_tokens"] for s in steps) == 2 * answers
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": f"Say {i}.", "chosen": f"{i}", "rejected": f"{i + 1}"})
                               for i in range(4)))
    flowlm("train", "--objective", "dpo", "--init", str(init), "--data", str(pairs), "--run-dir", str(tmp_path / "d"),
           "stages.dpo.seq_len=64", "stages.dpo.batch_size=2", "stages.dpo.objective.beta=0.1", *common)
    dpo = [json.loads(line) for line in (tmp_path / "d" / "dpo" / "metrics.jsonl").read_text().splitlines()
           if line.strip() and "loss" in json.loads(line)]
    assert dpo and all(s["grad_norm"] > 0 for s in dpo)
    # a tool call this template cannot write would train an empty turn: the tokenizer stage names the row
    tools = tmp_path / "tools.jsonl"
    tools.write_text(chat.read_text().splitlines()[0] + "\n" + json.dumps({"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": {}}}]}]}))
    proc = flowlm("train", "--objective", "sft", "--init", str(init), "--data", str(tools), "--run-dir", str(tmp_path / "t"),
                  *common, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path / 't' / 'corpus' / 'data.jsonl'}:2: the chat template of {init} does not write assistant `tool_calls`")
