"""Suites, prompt formats, the `sequence` verifier, user JSONL rows, contamination, the in-training eval
function, and the CLI's one-line errors."""

from __future__ import annotations

import json
import os

import pytest

from flowlm.errors import ConfigError, FlowError
from flowlm.eval.prompting import PromptFormat, render
from flowlm.eval.suites import BUILTIN_TASKS, load_suite


@pytest.fixture(scope="module")
def tok(micro_ckpt):
    from flowlm.model.tokenizer import load_tokenizer

    return load_tokenizer(micro_ckpt)


def test_builtin_suites_are_heldout_distinct_and_routed():
    from flowlm.data import tasks

    all_items = load_suite("builtin", n=50).items
    assert len({it.id for it in all_items}) == 50 and all(tasks.is_heldout(it.question) for it in all_items)
    for task in BUILTIN_TASKS:
        items = load_suite(task, n=10).items
        assert len(items) == 10 and all(it.row["task"] == task for it in items)
    routes = {it.row["task"]: it.row["dataset"] for it in all_items}
    assert routes == {"arithmetic": "math", "linear_equation": "math", "word_problem": "gsm8k", "sorting": "sequence",
                      "counting": "math"}
    assert load_suite("builtin", n=5).majority_vote


def test_builtin_instruct_suite_adds_one_verifiable_instruction_and_needs_both():
    from flowlm.rl.instruct import INSTRUCTIONS
    from flowlm.verify import verify_row

    plain, inst = load_suite("builtin", n=40).items, load_suite("builtin_instruct", n=40).items
    assert [it.id for it in plain] == [it.id for it in inst] and not load_suite("builtin_instruct", n=5).majority_vote
    texts = {t for t, _, _ in INSTRUCTIONS}
    used = set()
    for a, b in zip(plain, inst):
        added = b.question.removeprefix(a.question + " ")
        assert added in texts and b.verifier_names() == [a.row["dataset"], "ifeval"]
        assert not (a.row["task"] == "sorting" and "commas" in added)  # a sorted list is written with commas
        used.add(added)
    assert used == texts  # every instruction occurs in 40 items
    # the no-comma item: a right answer with a comma scores half, without one full marks
    it = next(b for b in inst if b.question.endswith("Do not use any commas in your response."))
    gt = it.row["verifiers"][0]["ground_truth"]
    assert verify_row(it.row, f"So, the result is \\boxed{{{gt}}}").score == 0.5
    assert verify_row(it.row, f"The result is \\boxed{{{gt}}}").score == 1.0


def test_builtin_if_suite_is_builtin_instruct_scored_by_ifeval_alone():
    from flowlm.eval.suites import suite_names
    from flowlm.verify import verify_row

    inst, only = load_suite("builtin_instruct", n=30).items, load_suite("builtin_if", n=30).items
    assert [(a.id, a.question) for a in inst] == [(b.id, b.question) for b in only]  # same items, same prompts
    for a, b in zip(inst, only):
        assert b.verifier_names() == ["ifeval"] and b.row["ground_truth"] == a.row["verifiers"][1]["ground_truth"]
    # a wrong answer that follows the instruction passes here and not in builtin_instruct
    a, b = next((a, b) for a, b in zip(inst, only) if a.question.endswith("Do not use any commas in your response."))
    assert verify_row(b.row, "The result is \\boxed{-999999}").score == 1.0
    assert verify_row(a.row, "The result is \\boxed{-999999}").score == 0.5
    assert verify_row(b.row, "So, the result is \\boxed{1}").score == 0.0
    assert "builtin_if" in suite_names()


def test_items_carry_their_category_for_the_breakdown(tmp_path):
    """A built-in item's category is its task; in `builtin_instruct` / `builtin_if` its instruction; a JSONL
    row's `category` column (kept out of the verifier row). MATH's subjects: tests/eval/test_suites_data.py."""
    from flowlm.eval.suites import BUILTIN_TASKS

    builtin = load_suite("builtin", n=10)
    assert [it.category for it in builtin.items] == [it.row["task"] for it in builtin.items]
    assert {it.category for it in builtin.items} == set(BUILTIN_TASKS)
    for name in ("builtin_if", "builtin_instruct"):
        for it in load_suite(name, n=12).items:
            gt = it.row["ground_truth"] if name == "builtin_if" else it.row["verifiers"][-1]["ground_truth"]
            assert it.category == "+".join(gt["instruction_id_list"]) and ":" in it.category
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "1+1?", "dataset": "math", "ground_truth": "2", "category": "easy"}) + "\n"
                    + json.dumps({"prompt": "2+2?", "dataset": "math", "ground_truth": "4"}) + "\n")
    a, b = load_suite("jsonl", rows).items
    assert (a.category, b.category) == ("easy", None) and "category" not in a.row
    rows.write_text(json.dumps({"prompt": "1+1?", "dataset": "math", "ground_truth": "2", "category": 3}) + "\n")
    with pytest.raises(FlowError, match=f"{rows}:1: category must be a string"):
        load_suite("jsonl", rows)


def test_sequence_verifier_checks_order():
    from flowlm.verify import verify

    assert verify("sequence", "so \\boxed{-5, 3, 7}", "-5, 3, 7").score == 1.0
    assert verify("sequence", "\\boxed{-5, 7, 3}", "-5, 3, 7").score == 0.0  # `math` calls this equal (a set)
    assert verify("sequence", "\\boxed{-5, 3}", "-5, 3, 7").score == 0.0
    assert verify("sequence", "<think>x", "-5, 3, 7").score == 0.0


def test_chat_prompt_thinking_switches_and_fewshot(tok):
    suite = load_suite("arithmetic", n=3)
    item = suite.items[0]
    on = tok.decode(render(item, suite, PromptFormat(), tok).ids)
    off = render(item, suite, PromptFormat(thinking=False), tok)
    assert on.endswith("<|im_start|>assistant\n") and item.question in on and "\\boxed{}" in on
    assert tok.decode(off.ids).endswith("<think>\n\n</think>\n\n")
    assert off.stop_token_ids == (tok.convert_tokens_to_ids("<|im_end|>"),)
    soft = tok.decode(render(item, suite, PromptFormat(switch="/no_think", fewshot=2), tok).ids)
    assert soft.count("<|im_start|>user") == 3 and soft.count("<|im_start|>assistant") == 3
    assert soft.rstrip().endswith("/no_think<|im_end|>\n<|im_start|>assistant")
    assert item.question not in soft.split("<|im_start|>user")[1]  # never the item itself as its own example


def test_plain_prompt_and_code_templates(tok, tmp_path):
    suite = load_suite("builtin", n=2)
    r = render(suite.items[0], suite, PromptFormat(style="plain", fewshot=1), tok)
    text = tok.decode(r.ids)
    assert text.startswith("Question: ") and text.endswith(f"Question: {suite.items[0].question}\nAnswer:")
    assert text.count("Question:") == 2 and r.stop == ("\nQuestion:",)
    he = tmp_path / "HumanEval.jsonl"
    he.write_text(json.dumps({"task_id": "T/0", "prompt": "def f(x):\n    \"\"\"Double.\"\"\"\n", "entry_point": "f",
                              "canonical_solution": "    return 2 * x\n",
                              "test": "def check(c):\n    assert c(2) == 4\n"}) + "\n")
    hs = load_suite("humaneval", tmp_path)
    plain = render(hs.items[0], hs, PromptFormat(style="plain"), tok)
    assert tok.decode(plain.ids) == hs.items[0].row["prompt"] and "\ndef " in plain.stop


def test_user_jsonl_rows_route_like_flowlm_verify(tmp_path):
    f = tmp_path / "rows.jsonl"
    rows = [{"id": "a", "prompt": "2+2?", "dataset": "math", "ground_truth": "4"},
            {"messages": [{"role": "user", "content": "Say hi in French."}], "dataset": "ifeval",
             "ground_truth": {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    suite = load_suite("jsonl", f)
    assert [it.id for it in suite.items] == ["a", "rows-2"] and suite.items[1].messages is not None
    assert not suite.majority_vote


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x", "dataset": "nosuch", "ground_truth": "1"}', "nosuch"),
    ('{"prompt": "x", "dataset": "math"', "invalid JSON"),
    ('{"dataset": "math", "ground_truth": "1"}', "exactly one of prompt, messages"),
    ('{"prompt": "x", "dataset": "ifeval", "ground_truth": {"instruction_id_list": ["no:such"], "kwargs": [{}]}}', "no:such"),
])
def test_bad_rows_name_file_and_line(tmp_path, line, message):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"prompt": "ok", "dataset": "math", "ground_truth": "1"}\n' + line + "\n")
    with pytest.raises(FlowError) as exc:
        load_suite("jsonl", f)
    assert f"{f}:2" in str(exc.value) and message in str(exc.value)


def test_benchmark_row_missing_a_field_names_file_and_line(tmp_path):
    f = tmp_path / "test.jsonl"
    f.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n')
    with pytest.raises(FlowError, match=rf"{f}:2: row has no answer"):
        load_suite("gsm8k", f)


def test_missing_verifier_dependency_names_the_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "math_verify" else real(name, *a))
    with pytest.raises(ConfigError, match=r"'math' verifier needs the 'math-verify' package \(pip install math-verify\)"):
        load_suite("arithmetic", n=2)


def test_unknown_suite_and_file_rules():
    from flowlm.eval.evaluate import parse_suite_specs

    with pytest.raises(ConfigError, match="did you mean 'gsm8k'"):
        load_suite("gsmk8")
    with pytest.raises(ConfigError, match="reads a file"):
        load_suite("mbpp")
    assert parse_suite_specs(["builtin,gsm8k=/a/t.jsonl", "mbpp"], file="/b") == [
        ("builtin", None), ("gsm8k", "/a/t.jsonl"), ("mbpp", "/b")]
    with pytest.raises(ConfigError, match="exactly one file suite"):
        parse_suite_specs(["mbpp,humaneval"], file="/b")


def test_contamination_share_finds_items_in_training_docs(tmp_path):
    from flowlm.eval.contamination import contamination_report, contamination_share

    items = load_suite("word_problem", n=10).items  # long enough to index (short arithmetic is not)
    corpus = tmp_path / "train.jsonl"
    docs = [{"id": "clean", "text": "Nothing to see here. " * 50}]
    docs += [{"id": f"leak{i}", "text": f"Some preamble.\nQuestion: {it.question}\nAnswer: {it.demo}\nMore text."}
             for i, it in enumerate(items[:3])]
    corpus.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    assert contamination_share(items, [corpus]) == pytest.approx(0.3)
    rep = contamination_report(items, [corpus])
    assert rep["matched_ids"] == sorted(it.id for it in items[:3]) and rep["docs_scanned"] == 4
    assert contamination_share(items, []) == 0.0


def test_contamination_reads_chat_and_preference_corpora(tmp_path):
    """An SFT corpus holds chat rows and a DPO one preference rows, not `{"text"}` documents: an item in a
    user turn, in an assistant's reasoning, or in a rejected answer is found all the same."""
    from flowlm.errors import FlowError
    from flowlm.eval.contamination import contamination_report

    items = load_suite("word_problem", n=10).items
    chat = tmp_path / "sft.jsonl"
    rows = [{"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]},
            {"messages": [{"role": "user", "content": items[0].question},
                          {"role": "assistant", "content": "The answer is 3.", "reasoning_content": items[0].demo}]},
            {"messages": [{"role": "user", "content": "Solve this."},
                          {"role": "assistant", "content": f"<think>{items[1].question}</think>{items[1].demo}"}]}]
    chat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = tmp_path / "dpo.jsonl"
    pairs.write_text(json.dumps({"prompt": "A question.", "chosen": "Fine.",
                                 "rejected": f"{items[2].question} {items[2].demo}"}) + "\n")
    rep = contamination_report(items, [chat, pairs])
    assert rep["matched_ids"] == sorted(it.id for it in items[:3]) and rep["docs_scanned"] == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"messages": [{"role": "wizard", "content": "x"}]}) + "\n")
    with pytest.raises(FlowError, match=f"{bad}:2"):
        contamination_report(items, [bad])


def test_contamination_reads_prompt_rows_and_benchmark_specs(tmp_path):
    """Prompt files (RL rows with routing, untagged `prompt` strings, user-only `messages`) have no answer
    to train on; their prompts and string ground truths are scanned. A benchmark spec is read as
    `flowlm rl prompts` reads it."""
    from flowlm.eval.contamination import contamination_report, training_texts

    items = load_suite("word_problem", n=10).items
    files = {"rl.jsonl": {"messages": [{"role": "user", "content": items[0].question}], "dataset": "gsm8k",
                          "ground_truth": items[0].demo},
             "plain.jsonl": {"prompt": f"{items[1].question}\n{items[1].demo}"},
             "user.jsonl": {"messages": [{"role": "user", "content": f"{items[2].question} {items[2].demo}"}]}}
    for name, row in files.items():
        (tmp_path / name).write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "other"}) + "\n")
    rep = contamination_report(items, [tmp_path / name for name in files])
    assert rep["matched_ids"] == sorted(it.id for it in items[:3]) and rep["docs_scanned"] == 6
    gsm = tmp_path / "gsm8k_train.jsonl"
    gsm.write_text(json.dumps({"question": items[3].question, "answer": items[3].demo}) + "\n")
    assert [d["id"] for d in training_texts(f"gsm8k={gsm}")] == ["gsm8k-0"]
    assert contamination_report(items, [f"gsm8k={gsm}"])["matched_ids"] == [items[3].id]


def test_generation_eval_fn_runs_inside_the_train_engine_callback(micro_ckpt):
    from flowlm.eval.evaluate import make_generation_eval_fn
    from flowlm.model.hf import load_native
    from flowlm.model.tokenizer import load_tokenizer

    model, _ = load_native(micro_ckpt)
    fn = make_generation_eval_fn(load_tokenizer(micro_ckpt), [load_suite("builtin", n=24)],
                                 fmt=PromptFormat(style="plain"),
                                 sampling=__import__("flowlm.eval.harness", fromlist=["x"]).SamplingSettings(
                                     temperature=0, max_new_tokens=12))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = fn(model)
    assert set(out) == {"builtin/pass@1", "builtin/mean_reward"} and 0 <= out["builtin/pass@1"] <= 1
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())  # the model is untouched
    assert fn(model) == out  # greedy: the same numbers every time


def test_generation_eval_fn_samples_n_per_item_and_breaks_down_by_category(micro_ckpt):
    from flowlm.eval.evaluate import make_generation_eval_fn
    from flowlm.eval.harness import SamplingSettings
    from flowlm.model.hf import load_native
    from flowlm.model.tokenizer import load_tokenizer

    model, _ = load_native(micro_ckpt)
    suite = load_suite("builtin", n=15)
    fn = make_generation_eval_fn(load_tokenizer(micro_ckpt), [suite],
                                 fmt=PromptFormat(style="plain"), by_category=True,
                                 sampling=SamplingSettings(n=3, temperature=0.8, max_new_tokens=10, seed=1))
    out = fn(model)
    per_task = {f"builtin/{t}/pass@{k}" for t in BUILTIN_TASKS for k in (1, 3)}
    assert set(out) == {"builtin/pass@1", "builtin/pass@3", "builtin/mean_reward"} | per_task
    assert all(0 <= v <= 1 for v in out.values()) and out["builtin/pass@1"] <= out["builtin/pass@3"]
    count = {t: sum(it.category == t for it in suite.items) for t in BUILTIN_TASKS}  # the suite's pass@1 is
    assert out["builtin/pass@1"] == pytest.approx(sum(out[f"builtin/{t}/pass@1"] * count[t] for t in count) / 15)
    assert fn(model) == out  # seeded: the same samples at every eval point for the same weights


def test_installed_cli_prints_a_row_per_category_under_its_suite(micro_ckpt, tmp_path):
    import subprocess

    from tests.cli_entry import flowlm_command

    out = tmp_path / "r.json"
    proc = subprocess.run([*flowlm_command(), "eval", "--model", str(micro_ckpt), "--suite", "builtin,builtin_if",
                           "--max-items", "10", "--format", "plain", "--temperature", "0.7", "--n", "2",
                           "--max-new-tokens", "8", "--no-progress", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    builtin, inst = results["builtin"]["by_category"], results["builtin_if"]["by_category"]
    assert set(builtin) == set(BUILTIN_TASKS) and sum(c["items"] for c in builtin.values()) == 10
    assert all(set(c) == {"items", "mean_reward", "pass@1", "pass@2"} for c in builtin.values())
    assert sum(c["items"] for c in inst.values()) == 10 and len(inst) > 1
    rows = [ln for ln in proc.stderr.splitlines() if "│" in ln]
    names = [ln.split("│")[1].strip() for ln in rows]
    first = names.index("builtin")
    assert names[first + 1: first + 1 + len(builtin)] == sorted(BUILTIN_TASKS)  # under their suite, in order
    assert names[names.index("builtin_if") + 1] == sorted(inst)[0]


def test_cli_errors_are_one_line(micro_ckpt, tmp_path, capsys):
    from flowlm.cli import main

    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"prompt": "x", "dataset": "math", "ground_truth": "1"}\nnot json\n')
    assert main(["eval", "--model", str(micro_ckpt), "--suite", "jsonl", "--file", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}:2:")
    assert main(["eval", "--model", str(micro_ckpt), "--suite", "humaneval"]) == 2
    assert "--file PATH" in capsys.readouterr().err


def test_sandbox_is_reported_only_for_suites_that_run_code(tmp_path):
    import json

    from flowlm.eval.evaluate import sandbox_for

    rows = tmp_path / "code.jsonl"
    rows.write_text(json.dumps({"id": "c1", "prompt": "Write f returning 1.", "dataset": "code",
                                "ground_truth": ["assert f() == 1"]}) + "\n")
    info = sandbox_for([load_suite("jsonl", rows)])
    assert info is not None and info["isolated"] is True and info["backend"] in ("bwrap", "bwrap-bundled")
    assert sandbox_for([load_suite("builtin", n=5)]) is None
