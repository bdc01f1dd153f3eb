"""`flowlm trace` through the installed command on a micro run (pretrain -> midtrain -> SFT -> DPO -> RL):
the stores each model trained on, outputs traced back to the training document they were copied from,
JSONL rows in and out, the kept index, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from flowlm.data.store import TokenStore
from flowlm.model.tokenizer import load_tokenizer
from flowlm.trace.lineage import training_stores
from tests.flow.test_post_flow import flowlm

MICRO = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128,
         "sliding_window": 32}
RECIPE = {
    "name": "trace", "threads": 1, "model": {"preset": "tiny", "overrides": MICRO},
    "eval": {"max_items": 4, "heldout_docs": 2, "tasks": ["prose"]},
    "stages": {
        "corpus": {"pretrain_bytes": 60000, "midtrain_bytes": 20000, "long_docs": 2, "curate": None},
        "tokenizer": {"vocab_size": 512, "train_bytes": 60000},
        "pretrain": {"data": "pretrain", "steps": 2, "seq_len": 128, "batch_size": 4},
        "midtrain": {"init": "pretrain", "data": "midtrain", "steps": 2, "seq_len": 128, "batch_size": 4},
        "sft_data": {"kind": "coldstart", "n_prompts": 24, "config": {"n": 2, "no_think_fraction": 0.25},
                     "teacher_settings": {"error_rate": 0.3}},
        "sft": {"kind": "train", "init": "midtrain", "data": "sft_data", "objective": "sft", "steps": 2,
                "seq_len": 512, "batch_size": 2},
        "dpo_pairs": {"kind": "pairs", "n_prompts": 12, "seed": 1, "strong": "procedural", "weak": "weak"},
        "dpo": {"kind": "train", "init": "sft", "data": "dpo_pairs", "steps": 2, "seq_len": 512, "batch_size": 2,
                "objective": {"name": "dpo", "beta": 0.1, "loss_type": "dpo"}},
        "rl": {"kind": "rl", "init": "dpo", "steps": 1, "seq_len": 256,
               "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8, "max_draws": 2}},
        "evaluate": {"kind": "eval", "models": ["pretrain", "sft"], "suites": ["builtin"], "max_items": 3,
                     "max_new_tokens": 24},
        "trace": {"kind": "trace", "eval": "evaluate", "long_span": 4},
    },
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trace")
    (d / "trace.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    flowlm("run", str(d / "trace.yaml"), "--run-dir", str(d / "run"), "--no-progress")
    return d / "run"


def rel(run: Path, stores: list[tuple[str, Path]]) -> list[tuple[str, str]]:
    return [(stage, str(path.relative_to(run))) for stage, path in stores]


def test_each_model_traces_to_the_stores_it_and_its_ancestors_trained_on(run):
    base = [("pretrain", "tokenizer/stores/pretrain"), ("midtrain", "tokenizer/stores/midtrain")]
    assert rel(run, training_stores(run / "pretrain" / "model").stores) == base[:1]
    sft = training_stores(run / "sft" / "model")
    assert rel(run, sft.stores) == [*base, ("sft", "sft_data/store")] and sft.skipped == {}
    pairs = [("dpo", "dpo_pairs/pairs/chosen"), ("dpo", "dpo_pairs/pairs/rejected")]
    assert rel(run, training_stores(run / "dpo" / "model").stores) == [*base, ("sft", "sft_data/store"), *pairs]
    rl = training_stores(run / "rl" / "model")
    assert rel(run, rl.stores) == [*base, ("sft", "sft_data/store"), *pairs] and list(rl.skipped) == ["rl"]


def test_the_lineage_holds_when_the_run_last_ran_another_recipe(run, tmp_path):
    """`flowlm train tiny-post --stage sft --run-dir runs/tiny`, then `flowlm train tiny --stage pretrain`
    there: flow.json's recipe is tiny's, without the SFT stages; the stages' own records still hold them."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("trace_index"))
    record = json.loads((copy / "flow.json").read_text())
    stages = record["recipe"]["config"]["stages"]
    record["recipe"]["config"]["stages"] = {k: stages[k] for k in ("corpus", "tokenizer", "pretrain")}
    (copy / "flow.json").write_text(json.dumps(record))
    assert rel(copy, training_stores(copy / "sft" / "model").stores)[-1] == ("sft", "sft_data/store")


def test_a_model_trained_from_another_runs_model_traces_into_that_run(run, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"Adding {i} and {i} makes exactly {2 * i}, my friend."}]}
            for i in range(40)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    flowlm("train", "--objective", "sft", "--init", str(run / "midtrain" / "model"), "--data", str(tmp_path / "chat.jsonl"),
           "--run-dir", str(tmp_path / "mine"), "stages.sft.seq_len=128", "stages.sft.batch_size=2", "stages.sft.steps=1",
           "--no-progress")
    lineage = training_stores(tmp_path / "mine" / "sft" / "model")
    assert [(s, str(p)) for s, p in lineage.stores] == [
        (f"{run.name}/pretrain", str(run / "tokenizer" / "stores" / "pretrain")),
        (f"{run.name}/midtrain", str(run / "tokenizer" / "stores" / "midtrain")),
        ("sft", str(tmp_path / "mine" / "tokenizer" / "stores" / "data"))]
    out = json.loads(flowlm("trace", "--model", str(tmp_path / "mine" / "sft" / "model"),
                            "--text", "Adding 7 and 7 makes exactly 14, my friend.").stdout)["trace"]
    assert out["spans"][0]["tokens"] == out["n_tokens"] and out["docs"][0]["store"].endswith("stores/data")
    # a model from outside any run: what trained it is unknown, and said so
    outside = tmp_path / "hf"
    shutil.copytree(run / "midtrain" / "model", outside)
    flowlm("train", "--objective", "sft", "--init", str(outside), "--data", str(tmp_path / "chat.jsonl"),
           "--run-dir", str(tmp_path / "loose"), "stages.sft.seq_len=128", "stages.sft.batch_size=2",
           "stages.sft.steps=1", "--no-progress")
    loose = training_stores(tmp_path / "loose" / "sft" / "model")
    assert [s for s, _ in loose.stores] == ["sft"] and "not a model of a flowlm run" in loose.skipped["sft"]


def test_the_trace_stage_records_each_models_overlap_and_the_report_shows_it(run):
    record = json.loads((run / "flow.json").read_text())
    traces = record["stages"]["trace"]["metrics"]["traces"]
    assert set(traces) == {"pretrain", "sft"}
    rows = [json.loads(line) for line in (run / "trace" / "traces.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["model"] for r in rows} == {"pretrain", "sft"}
    for model in ("pretrain", "sft"):
        sm, mine = traces[model]["builtin"], [r["trace"] for r in rows if r["model"] == model]
        assert sm["outputs"] == 3 and sm["longest"] == max(t["longest_match"] for t in mine)
        assert sm["long_share"] == pytest.approx(sum(t["longest_match"] >= 4 for t in mine) / 3, abs=1e-4)
    # the stage traced each model against its own lineage: pretrain's answers against pretraining data only
    stores = {d["store"] for r in rows if r["model"] == "pretrain" for d in r["trace"]["docs"]}
    assert stores <= {str(run / "tokenizer" / "stores" / "pretrain")}
    report = flowlm("report", str(run)).stdout
    assert "verbatim overlap" in report and "pretrain" in report
    assert "<h2>Verbatim overlap with training data</h2>" in (run / "report.html").read_text()


def test_a_trace_stage_must_name_an_eval_stage(tmp_path):
    bad = {**RECIPE, "stages": {**RECIPE["stages"], "trace": {"kind": "trace", "eval": "sft"}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    proc = flowlm("run", str(tmp_path / "bad.yaml"), "--run-dir", str(tmp_path / "r"), check=False)
    # checked with the recipe, before any stage runs
    assert proc.returncode == 2 and "stage 'trace': eval 'sft' is not an eval stage" in proc.stderr
    assert not (tmp_path / "r" / "flow.json").exists()


def test_an_sft_answer_traces_back_to_the_training_document_it_came_from(run):
    rows = [json.loads(line) for line in (run / "sft_data" / "rows.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["messages"][-1].get("reasoning_content"))
    step = next(ln for ln in row["messages"][-1]["reasoning_content"].splitlines() if ln.startswith("Step 1"))
    proc = flowlm("trace", "--model", str(run / "sft" / "model"), "--text", step)
    out = json.loads(proc.stdout)
    assert out["text"] == step
    trace = out["trace"]
    assert trace["match_coverage"] == 1.0  # the whole line is in the SFT data
    top = max(trace["spans"], key=lambda s: s["tokens"])
    assert top["text"] == step and top["count"] >= 1 and trace["coverage"] == 1.0
    tok = load_tokenizer(run / "sft" / "model")
    sft_store = TokenStore.open(run / "sft_data" / "store")
    sft_docs = [trace["docs"][k] for k in top["docs"] if trace["docs"][k]["store"] == str(sft_store.path)]
    assert sft_docs, trace["docs"]
    for d in sft_docs:  # the document named holds the span, and the snippet shows it
        assert d["snippet"]["match"] == step and step in tok.decode(sft_store.doc(d["store_doc"]).tolist())
    assert f"[[{step}]]" in proc.stderr and "sft: sft_data/store" in proc.stderr
    again = flowlm("trace", "--model", str(run / "sft" / "model"), "--text", step)
    assert json.loads(again.stdout) == out and "indexing" not in again.stderr  # the kept index is reused


def test_text_absent_from_the_data_has_no_long_span(run):
    out = json.loads(flowlm("trace", "--model", str(run / "pretrain" / "model"), "--min-tokens", "4",
                            "--text", "zqxj vvkw pqzz").stdout)
    assert out["trace"]["spans"] == [] and out["trace"]["coverage"] == 0.0


def test_jsonl_rows_in_traced_rows_out_and_the_store_form(run, tmp_path):
    rows = [{"id": "a", "prompt": "Compute it.", "completions": [{"text": "Step 1: 2 * 5 = 10"}, {"text": ""}]},
            {"id": "b", "messages": [{"role": "user", "content": "x"}], "completion": "The answer is 7."}]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = flowlm("trace", "--model", str(run / "dpo" / "model"), "--file", str(src), "--out", str(tmp_path / "o.jsonl"))
    out = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == ["a", "b"] and out[1]["completion"] == "The answer is 7."
    assert isinstance(out[0]["trace"], list) and len(out[0]["trace"]) == 2 and out[0]["trace"][1]["n_tokens"] == 0
    assert isinstance(out[1]["trace"], dict) and out[1]["trace"]["spans"]
    assert "2 row(s), 3 output(s)" in proc.stderr
    # the same text against one store named directly: the store's own documents only
    store = run / "tokenizer" / "stores" / "pretrain"
    direct = json.loads(flowlm("trace", "--store", str(store), "--tokenizer", str(run / "tokenizer" / "tokenizer"),
                               "--text", "The answer is 7.").stdout)["trace"]
    assert direct["docs"] and {d["store"] for d in direct["docs"]} == {str(store)}


def test_bad_input_is_one_line(run, tmp_path):
    model = str(run / "sft" / "model")
    both = flowlm("trace", "--model", model, "--store", "x", "--text", "a", check=False)
    assert both.returncode == 2 and both.stderr.count("\n") == 1 and "not both" in both.stderr
    outside = tmp_path / "model"
    outside.mkdir()
    lost = flowlm("trace", "--model", str(outside), "--text", "a", check=False)
    assert lost.returncode == 1 and "not inside a flowlm run" in lost.stderr and lost.stderr.count("\n") == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"completion": "a"}\n{"id": 3}\n')
    miss = flowlm("trace", "--model", model, "--file", str(bad), check=False)
    assert miss.returncode == 1 and f"{bad}:2: no output to trace" in miss.stderr and miss.stdout == ""
    other = flowlm("trace", "--model", model, "--index", str(run / "trace_index" / "mine"), "--text", "a")
    assert other.returncode == 0
    clash = flowlm("trace", "--model", str(run / "dpo" / "model"), "--index", str(run / "trace_index" / "mine"),
                   "--text", "a", check=False)
    assert clash.returncode == 1 and "built from other stores" in clash.stderr
    gone = flowlm("trace", "--store", str(tmp_path / "nowhere"), "--tokenizer", str(run / "tokenizer" / "tokenizer"),
                  "--text", "a", check=False)
    assert gone.returncode == 1 and f"{tmp_path / 'nowhere'}: not a token store" in gone.stderr
    nodocs = flowlm("trace", "--store", str(run / "tokenizer" / "stores" / "pretrain"), "--text", "a", check=False)
    assert nodocs.returncode == 2 and "--store needs --tokenizer" in nodocs.stderr
    dens = flowlm("trace", "--model", model, "--density", "0", "--text", "a", check=False)
    assert dens.returncode == 2 and "--density must be positive" in dens.stderr
