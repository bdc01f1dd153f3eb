"""`flowlm post multiturn` through the installed entry point, on a real checkpoint: a micro simulator that learnt
by heart the earlier exchange it writes before one prompt (synthetic context), and the command's bad input."""

from __future__ import annotations

import json

import pytest

from flowlm.generate.prompts import to_prompt_ids
from flowlm.model.tokenizer import turn_end_ids
from flowlm.post.multiturn import context_prompt
from flowlm.post.teachers import with_mode
from tests.flow.test_post_flow import flowlm

PROMPT = "What is 6 * 7?"
CONTEXT = [{"role": "user", "content": "I am practising my times tables."},
           {"role": "assistant", "content": "Great, ask me anything."}]


@pytest.fixture(scope="module")
def simulator(tmp_path_factory):
    from flowlm.model.hf import save_pretrained
    from flowlm.model.tokenizer import load_tokenizer, train_tokenizer
    from tests.tools.memorize import memorize

    out = tmp_path_factory.mktemp("multiturn")
    asked = context_prompt(PROMPT, 1)
    train_tokenizer([asked[0]["content"], json.dumps(CONTEXT)] * 40, 600, out / "tok")
    tok = load_tokenizer(out / "tok")
    prompt = to_prompt_ids(with_mode(asked, False), tok, enable_thinking=False)
    said = tok.encode(json.dumps(CONTEXT), add_special_tokens=False) + list(turn_end_ids(tok))
    save_pretrained(memorize(len(tok), [(prompt, False), (said, True)], context=2048, steps=300), tok, out / "sim")
    return out / "sim"


def test_synthetic_context_puts_the_simulated_exchange_before_the_prompt(simulator, tmp_path):
    rows = tmp_path / "prompts.jsonl"
    rows.write_text(json.dumps({"id": "q1", "prompt": PROMPT, "dataset": "math", "ground_truth": "42"}) + "\n")
    out = tmp_path / "mt.jsonl"
    proc = flowlm("post", "multiturn", "--file", str(rows), "--simulator", str(simulator), "--set", "method=synthetic_context",
                  "--set", "teacher.temperature=0", "--set", "teacher.max_new_tokens=80", "--out", str(out))
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(kept) == 1, proc.stderr
    assert kept[0]["messages"] == [*CONTEXT, {"role": "user", "content": PROMPT}] and kept[0]["ground_truth"] == "42"
    assert proc.stderr.strip().splitlines()[-1] == f"post multiturn: 1 rows from 1 prompts -> {out}"


@pytest.mark.parametrize("args,msg", [
    ([], "self_talk needs --teacher"),
    (["--set", "method=synthetic_context", "--set", "turns=1"], "turns"),
    (["--set", "method=synthetic_context", "--simulator", "procedural"], "not a checkpoint directory"),
])
def test_multiturn_bad_input_is_one_line(simulator, tmp_path, args, msg):
    rows = tmp_path / "prompts.jsonl"
    rows.write_text(json.dumps({"prompt": PROMPT}) + "\n")
    cmd = ["post", "multiturn", "--file", str(rows), "--out", str(tmp_path / "o.jsonl")]
    if "--simulator" not in args:
        cmd += ["--simulator", str(simulator)]
    proc = flowlm(*cmd, *args, check=False)
    assert proc.returncode != 0 and msg in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_a_multiturn_stage_feeds_a_pairs_stage_that_prefers_on_the_last_turn(simulator, tmp_path):
    """`kind: multiturn` in a recipe (synthetic context from the micro simulator), then `kind: pairs` with
    `prompts: mt` and the procedural strong and weak teachers, which answer the grown row because its last
    turn, its ground truth and its worked solution are the original row's."""
    from tests.flow.test_post_flow import write_recipe

    rows = tmp_path / "prompts.jsonl"
    rows.write_text(json.dumps({"id": "q1", "prompt": PROMPT, "dataset": "math", "ground_truth": "42", "answer": "42",
                                "solution": "Six sevens are 42.\nThe answer is \\boxed{42}."}) + "\n")
    recipe = {"name": "mt", "threads": 1, "model": {"preset": "tiny"}, "stages": {
        "corpus": {"pretrain_bytes": 20000, "midtrain_bytes": 5000, "long_docs": 1, "curate": None},
        "tokenizer": {"path": str(simulator)},
        "mt": {"kind": "multiturn", "prompts": str(rows), "simulator": str(simulator),
               "teacher_settings": {"temperature": 0, "max_new_tokens": 80}, "config": {"method": "synthetic_context"}},
        "dpo_pairs": {"kind": "pairs", "prompts": "mt", "strong": "procedural", "weak": "weak",
                      "config": {"thinking": False}}}}
    flowlm("run", str(write_recipe(tmp_path / "mt.yaml", recipe)), "--run-dir", str(tmp_path / "run"), "--no-progress")
    [grown] = [json.loads(x) for x in (tmp_path / "run" / "mt" / "rows.jsonl").read_text().splitlines()]
    assert grown["messages"] == [*CONTEXT, {"role": "user", "content": PROMPT}]
    [pair] = [json.loads(x) for x in (tmp_path / "run" / "dpo_pairs" / "rows.jsonl").read_text().splitlines()]
    assert [m["role"] for m in pair["prompt"]] == ["user", "assistant", "user"]
    assert pair["prompt"][0]["content"] == CONTEXT[0]["content"] and pair["prompt"][-1]["content"].startswith(PROMPT)
    assert pair["chosen"][0]["content"].startswith("Six sevens are 42.")
    bad = dict(recipe, stages={**recipe["stages"], "dpo_pairs": {**recipe["stages"]["dpo_pairs"], "prompts": "corpus"}})
    proc = flowlm("run", str(write_recipe(tmp_path / "bad.yaml", bad)), "--run-dir", str(tmp_path / "run"), check=False)
    assert proc.returncode != 0 and "stage 'corpus' made no rows" in proc.stderr, proc.stderr
