"""The plug-in seams: an objective and a stage kind defined outside flowlm (tests/plugins/toy.py) are
selected by name from recipes, trained / run, fingerprinted, resumed; undeclared reads fail."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tests.plugins.toy  # noqa: F401  (registers seq_mean and wordcount in this process)
from flowlm.errors import FlowError

REPO = Path(__file__).resolve().parents[2]
MICRO = [
    "model.overrides={hidden_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, intermediate_size: 128, sliding_window: 32}",
    "stages.corpus.pretrain_bytes=60000",
    "stages.corpus.midtrain_bytes=20000",
    "stages.corpus.long_docs=2",
    "stages.corpus.curate=null",
    "stages.tokenizer.vocab_size=512",
    "stages.tokenizer.train_bytes=60000",
    "eval.max_items=4",
    "eval.heldout_docs=2",
    "eval.tasks=[prose]",
    "threads=1",
]


def toy_stage(accum: int) -> list[str]:
    return ["stages.pretrain.objective={name: seq_mean, scale: 1.0}", "stages.pretrain.steps=6",
            "stages.pretrain.seq_len=64", "stages.pretrain.batch_size=4", f"stages.pretrain.grad_accum={accum}",
            "stages.pretrain.checkpoint_every=2", "stages.pretrain.keep_last=4"]


def run(run_dir: Path, overrides: list[str], stages: list[str], env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "flowlm.cli", "train", "tiny", "--run-dir", str(run_dir), "--no-progress"]
    for s in stages:
        args += ["--stage", s]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLOWLM_PLUGINS": "tests.plugins.toy", **(env or {})}
    proc = subprocess.run(args + overrides, capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def losses(run_dir: Path, stage: str = "pretrain") -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / stage / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Corpus and tokenizer, built once; each test copies the directory."""
    d = tmp_path_factory.mktemp("seams") / "base"
    run(d, MICRO, ["corpus", "tokenizer"])
    return d


@pytest.fixture(scope="module")
def accum_runs(base, tmp_path_factory) -> dict[int, Path]:
    out = {}
    for accum in (1, 4):
        d = tmp_path_factory.mktemp(f"accum{accum}") / "run"
        shutil.copytree(base, d)
        run(d, MICRO + toy_stage(accum), ["pretrain"])
        out[accum] = d
    return out


def test_toy_objective_from_recipe_accumulation_1_equals_4(accum_runs):
    one, four = losses(accum_runs[1]), losses(accum_runs[4])
    assert [r["step"] for r in one] == list(range(1, 7))
    for a, b in zip(one, four):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["max_seq_loss"] == pytest.approx(a["max_seq_loss"], rel=1e-5)
    rec = json.loads((accum_runs[4] / "flow.json").read_text())["stages"]["pretrain"]
    assert rec["config"]["objective"] == {"name": "seq_mean", "scale": 1.0}


def test_per_sequence_metrics_are_not_divided_by_tokens(accum_runs):
    for r in losses(accum_runs[4]):
        # Sum: every row of the 4-row batch counted once over the 4 micro-batches; the loss unit too
        assert r["sequences"] == 4 and r["loss_sequences"] == 4
        # Mean(tokens, rows): labelled tokens per row, at most seq_len; Max: the worst row's mean loss
        assert 1 < r["tokens_per_seq"] <= 64
        assert r["max_seq_loss"] >= r["loss"]


def test_toy_objective_resumes_exactly_after_kill(base, accum_runs, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(base, d)
    # accumulation 4: loss calls 1-4 are step 1, ...; call 14 is inside step 4, after the step-2 checkpoint
    proc = run(d, MICRO + toy_stage(4), ["pretrain"], env={"FLOWLM_TOY_KILL_AT_CALL": "14"}, check=False)
    assert proc.returncode == -9
    assert json.loads((d / "flow.json").read_text())["stages"]["pretrain"]["status"] == "running"
    run(d, MICRO + toy_stage(4), ["pretrain"])
    resumed, straight = losses(d), losses(accum_runs[4])
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(straight, resumed):
        assert (a["loss"], a["grad_norm"], a["max_seq_loss"]) == (b["loss"], b["grad_norm"], b["max_seq_loss"])


def test_unknown_objective_is_a_one_line_error(base, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(base, d)
    proc = run(d, MICRO + ["stages.pretrain.objective={name: seq_maen}"], ["pretrain"], check=False)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr
    assert "stages.pretrain.objective" in errors[0] and "did you mean 'seq_mean'" in errors[0]


# -- stage kinds --------------------------------------------------------------------------------------
def _wordcount_recipe(source: Path) -> dict:
    return {"name": "wc", "stages": {"count": {"kind": "wordcount", "source": str(source)}}}


def test_toy_stage_runs_skips_and_reruns_when_its_declared_input_changes(tmp_path):
    from flowlm.flow.runner import run_recipe
    from flowlm.flow.schema import parse_recipe

    src = tmp_path / "words.txt"
    src.write_text("one two three")
    recipe = parse_recipe(_wordcount_recipe(src), "test")
    rec = run_recipe(recipe, "test", [], tmp_path / "run", show_progress=False)
    first = rec.stages["count"]
    assert first["status"] == "done" and first["metrics"] == {"words": 3} and list(first["inputs"]) == [str(src)]
    rec = run_recipe(recipe, "test", [], tmp_path / "run", show_progress=False)
    assert rec.stages["count"]["started"] == first["started"]  # skipped: unchanged
    src.write_text("one two three four")
    rec = run_recipe(recipe, "test", [], tmp_path / "run", show_progress=False)
    assert rec.stages["count"]["metrics"] == {"words": 4}
    assert rec.stages["count"]["fingerprint"] != first["fingerprint"]


def test_a_stage_reading_an_undeclared_input_fails(tmp_path):
    from flowlm.flow.runner import run_recipe
    from flowlm.flow.schema import parse_recipe
    from flowlm.flow.stages import StageKind, register, unregister

    class SneakyConfig(tests.plugins.toy.Strict):
        kind: tests.plugins.toy.Literal["sneaky"] = "sneaky"

    def sneaky(ctx, name, cfg):
        return {}, {"words": json.loads(ctx.path(ctx.outputs["count"]["count"]).read_text())["words"]}

    register(StageKind(name="sneaky", config=SneakyConfig, run=sneaky))
    try:
        src = tmp_path / "words.txt"
        src.write_text("a b")
        raw = _wordcount_recipe(src)
        raw["stages"]["peek"] = {"kind": "sneaky"}
        with pytest.raises(FlowError, match="reads the outputs of 'count', which its kind does not declare"):
            run_recipe(parse_recipe(raw, "test"), "test", [], tmp_path / "run", show_progress=False)
    finally:
        unregister("sneaky")


def test_stage_kind_config_errors_name_the_key(tmp_path):
    from flowlm.errors import ConfigError
    from flowlm.flow.schema import parse_recipe

    with pytest.raises(ConfigError, match=r"unknown key 'stages.count.sourc'.*did you mean 'stages.count.source'"):
        parse_recipe({"name": "wc", "stages": {"count": {"kind": "wordcount", "source": "x", "sourc": "x"}}}, "test")
    with pytest.raises(ConfigError, match="refers to 'nowhere', which is not an earlier stage"):
        parse_recipe({"name": "s", "stages": {"corpus": {}, "soup": {"from": ["nowhere"]}}}, "test")


def test_train_stage_starts_from_any_local_causal_lm(base, tmp_path):
    """`init: <path>` to a non-OLMo checkpoint (a tiny Qwen3): the engine trains it through the adapter and
    exports an HF directory of the same architecture."""
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from flowlm.model.tokenizer import load_tokenizer

    d = tmp_path / "run"
    shutil.copytree(base, d)
    vocab = len(load_tokenizer(d / "tokenizer" / "tokenizer"))
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128)
    Qwen3ForCausalLM(cfg).save_pretrained(tmp_path / "qwen")
    run(d, MICRO + [f"stages.pretrain.init={tmp_path / 'qwen'}", "stages.pretrain.steps=3", "stages.pretrain.seq_len=64",
                    "stages.pretrain.batch_size=2"], ["pretrain"])
    st = json.loads((d / "flow.json").read_text())["stages"]["pretrain"]
    assert st["status"] == "done" and str(tmp_path / "qwen") in st["inputs"] and st["metrics"]["steps"] == 3
    assert st["metrics"]["eval"]["prose/bpb"] > 0
    model = AutoModelForCausalLM.from_pretrained(d / "pretrain" / "model")
    assert type(model).__name__ == "Qwen3ForCausalLM"


def test_tokenizer_stage_tokenizes_every_corpus_chat_included(tmp_path):
    """A `files` corpus stage with a text corpus and a chat corpus: the tokenizer stage makes a store for
    each, the chat one with assistant-only label masks, and a train stage trains on it."""
    from flowlm.data.store import TokenStore

    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"id": str(i), "text": f"Document {i}: the quick brown fox jumps. " * 30}) + "\n"
                            for i in range(40)))
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                                     {"role": "assistant", "content": f"It is {2 * i}."}]}) + "\n"
                            for i in range(40)))
    d = tmp_path / "run"
    over = [m for m in MICRO if not m.startswith("stages.corpus.") or "curate" in m] + [
        "stages.corpus.source=files", f"stages.corpus.files={{pretrain: [{text}], sft: [{chat}]}}",
        "stages.tokenizer.train_bytes=20000", "stages.pretrain.data=sft", "stages.pretrain.steps=2",
        "stages.pretrain.seq_len=64", "stages.pretrain.batch_size=2"]
    run(d, over, ["corpus", "tokenizer", "pretrain"])
    rec = json.loads((d / "flow.json").read_text())["stages"]
    assert {"store:pretrain", "store:sft"} <= set(rec["tokenizer"]["outputs"])
    store = TokenStore.open(d / rec["tokenizer"]["outputs"]["store:sft"])
    assert store.label_mask is not None and len(store) == 40
    mask = store.doc_mask(0)
    assert 0 < int(mask.sum()) < len(mask)  # the answer is trained on, the prompt is not
    assert rec["pretrain"]["status"] == "done" and rec["pretrain"]["metrics"]["steps"] == 2


def test_train_stage_scores_generation_suites_at_each_eval_point(base, tmp_path):
    from flowlm.eval.suites import load_suite

    d = tmp_path / "run"
    shutil.copytree(base, d)
    run(d, MICRO + ["stages.pretrain.steps=2", "stages.pretrain.seq_len=64", "stages.pretrain.batch_size=2",
                    "stages.pretrain.generation_eval={suites: [arithmetic, builtin], max_items: 4, max_new_tokens: 8,"
                    " temperature: 0.8, n: 2, by_category: true}"],
        ["pretrain"])
    metrics = json.loads((d / "flow.json").read_text())["stages"]["pretrain"]["metrics"]
    tasks = {it.category for it in load_suite("builtin", n=4).items}
    for point in (metrics["eval_init"], metrics["eval"]):
        assert 0.0 <= point["arithmetic/pass@1"] <= point["arithmetic/pass@2"] <= 1.0 and "prose/bpb" in point
        # 2 samples per item, and pass@1 / pass@2 per task of the builtin suite's items
        assert {k.split("/")[1] for k in point if k.startswith("builtin/") and k.count("/") == 2} == tasks
        assert point["arithmetic/arithmetic/pass@1"] == point["arithmetic/pass@1"]  # one category: the suite


@pytest.mark.parametrize("fmt", ["chat", "plain"])
def test_generation_eval_format_reaches_the_prompt_format(monkeypatch, fmt):
    """`generation_eval.format: plain` (RL-Zero's in-loop curves) renders the suites' base-model template."""
    import flowlm.eval.evaluate as evaluate
    from flowlm.flow.stages import train as train_stage

    seen = {}
    monkeypatch.setattr(train_stage, "bpb_eval_fn", lambda ctx, name, tok: lambda model: {"prose/bpb": 1.0})
    monkeypatch.setattr(evaluate, "load_suites", lambda specs, max_items: ["suite"])
    monkeypatch.setattr(evaluate, "make_generation_eval_fn",
                        lambda tok, suites, fmt, sampling, by_category: seen.update(fmt=fmt, sampling=sampling,
                                                                                    by_category=by_category)
                        or (lambda model: {"s/pass@1": 0.5}))
    cfg = train_stage.TrainStageConfig.model_validate(
        {"kind": "train", "init": "x", "data": "d", "steps": 1, "seq_len": 8, "batch_size": 1,
         "generation_eval": {"suites": ["builtin_if"], "format": fmt, "thinking": False}})
    ctx = type("Ctx", (), {"world": type("W", (), {"distributed": False})()})()
    fn = train_stage.eval_fn(ctx, "rl", cfg, tok=None)
    assert fn(None) == {"prose/bpb": 1.0, "s/pass@1": 0.5}
    assert seen["fmt"].style == fmt and seen["fmt"].thinking is False
    assert (seen["sampling"].n, seen["sampling"].temperature, seen["by_category"]) == (1, 0.0, False)  # greedy
    sampled = cfg.generation_eval.model_copy(update={"n": 4, "temperature": 0.8, "top_p": 0.9, "seed": 3,
                                                     "by_category": True})
    train_stage.eval_fn(ctx, "rl", cfg.model_copy(update={"generation_eval": sampled}), tok=None)
    s = seen["sampling"]
    assert (s.n, s.temperature, s.top_p, s.seed, seen["by_category"]) == (4, 0.8, 0.9, 3, True)


def test_generation_eval_refuses_several_greedy_samples():
    from pydantic import ValidationError

    from flowlm.flow.stages.train import GenerationEvalConfig

    with pytest.raises(ValidationError, match="n = 4 greedy samples would all be the same"):
        GenerationEvalConfig(suites=["builtin"], n=4)
    assert GenerationEvalConfig(suites=["builtin"], n=4, temperature=0.6).n == 4
