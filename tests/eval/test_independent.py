"""Independent check: `flowlm eval` with greedy decoding equals a plain `transformers` greedy loop whose
answers are scored by `flowlm.verify`, item for item, on 120 built-in held-out items."""

from __future__ import annotations

import json

import torch

from flowlm.cli import main as flowlm_main

N_ITEMS, MAX_NEW = 120, 16


def hf_greedy_answers(ckpt, questions: list[str]) -> list[str]:
    from transformers import AutoModelForCausalLM

    from flowlm.model.tokenizer import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    tok = load_tokenizer(ckpt)
    out = []
    with torch.no_grad():
        for q in questions:
            ids = torch.tensor([tok.encode(f"Question: {q}\nAnswer:", add_special_tokens=False)])
            gen = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
            text = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
            out.append(text.split("\nQuestion:")[0])  # the plain format's stop string, cut as the engine does
    return out


def test_flowlm_eval_equals_transformers_greedy_scored_by_verify(micro_ckpt, tmp_path):
    from flowlm.eval.suites import load_suite
    from flowlm.verify import verify_row

    out = tmp_path / "results.json"
    rc = flowlm_main(["eval", "--model", str(micro_ckpt), "--suite", "builtin", "--max-items", str(N_ITEMS),
                      "--format", "plain", "--temperature", "0", "--max-new-tokens", str(MAX_NEW),
                      "--no-progress", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    ours = doc["items"]["builtin"]
    items = load_suite("builtin", n=N_ITEMS).items
    assert [r["id"] for r in ours] == [it.id for it in items] and len(items) == N_ITEMS
    theirs = hf_greedy_answers(micro_ckpt, [it.question for it in items])
    ref_scores = [verify_row(it.row, text).score for it, text in zip(items, theirs)]
    mismatched = [(it.id, r["samples"][0]["text"], t) for it, r, t in zip(items, ours, theirs) if r["samples"][0]["text"] != t]
    assert not mismatched, mismatched[:3]
    assert [r["samples"][0]["score"] for r in ours] == ref_scores
    n_right = sum(ref_scores)
    assert 0 < n_right < N_ITEMS  # a mix of right and wrong answers: the comparison has teeth
    assert doc["results"]["builtin"]["pass@1"] == n_right / N_ITEMS
    by_task: dict[str, list[float]] = {}
    for it, sc in zip(items, ref_scores):
        by_task.setdefault(it.row["task"], []).append(sc)
    assert {t: (c["items"], c["pass@1"]) for t, c in doc["results"]["builtin"]["by_category"].items()} == {
        t: (len(v), sum(v) / len(v)) for t, v in by_task.items()}


def test_other_hf_architectures_go_through_the_engines_hf_path(micro_ckpt, tmp_path):
    """A local Llama checkpoint (random, no download) evaluates through `flowlm.generate`'s HF path and
    gives the same greedy answers as transformers itself."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from flowlm.eval.harness import SamplingSettings, build_engine, run_suites
    from flowlm.eval.prompting import PromptFormat
    from flowlm.eval.suites import load_suite
    from flowlm.model.tokenizer import load_tokenizer

    tok = load_tokenizer(micro_ckpt)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.2, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).eval().save_pretrained(tmp_path / "llama")
    tok.save_pretrained(str(tmp_path / "llama"))
    engine = build_engine(tmp_path / "llama", max_slots=4)
    assert type(engine.runner).__name__ == "HFRunner"
    suite = load_suite("builtin", n=6)
    res = run_suites(engine, [suite], PromptFormat(style="plain"), SamplingSettings(temperature=0, max_new_tokens=MAX_NEW),
                     workers=0)["builtin"]
    theirs = hf_greedy_answers(tmp_path / "llama", [it.question for it in suite.items])
    assert [r["samples"][0]["text"] for r in res.items] == theirs
