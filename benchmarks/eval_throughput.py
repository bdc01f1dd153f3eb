"""Generation-eval throughput: `flowlm eval`'s harness vs lm-evaluation-harness (HF backend) on the same items.

Workload (both sides identical): a tiny-preset OLMo-3 (10.5 M parameters, vocab 8,192) with random
weights (0 training steps: random weights almost never emit EOS, so every sample runs to the length
limit — a fair fixed-length workload, not a quality measurement), 128 built-in held-out items written to a
local JSONL file, the plain prompt `Question: {question}\\nAnswer:`, n = 4 samples per item at
temperature 0.6 / top-p 0.95, `--max-new-tokens` (default 64) new tokens, stop string `\\nQuestion:`.

- flowlm: `flowlm.eval.harness.run_suites` — render, continuous-batching native engine
  (`--slots`, default 256), verification of every sample in the 2-process verifier pool.
- peer: lm-evaluation-harness (`lm_eval.simple_evaluate`, `HFLM`, `--peer-batch` rows per batch,
  default 64) on a `generate_until` task read from the same JSONL with `repeats: n` and the same
  generation kwargs, metric exact match. Offline: the dataset is a local file, the model a local dir.
  Without lm-eval installed (`pip install lm-eval`), `--peer hf` is a plain transformers `generate`
  loop (left-padded batches, `num_return_sequences=n`) and the RESULT line says so.

Both contenders are timed end to end (model load, prompts, generation, scoring; lm-eval's one-off task
index is built before the clock starts), in interleaved rounds in
one process after a warm-up; the headline is the ratio of medians of items/s; generated tokens/s
(flowlm: engine count; peer: non-pad new tokens of every `generate` call) are reported beside it.
`OMP_WAIT_POLICY=PASSIVE` as in the other benchmarks (the machine is shared).

    python benchmarks/eval_throughput.py [--smoke] [--items 128] [--n 4] [--max-new-tokens 64]
                                         [--rounds 2] [--peer lm-eval|hf] [--threads 2]

Ends with `RESULT {json}` (keys `flowlm`, `peer`, `ratio` = items/s, plus tokens/s and the settings).
`--smoke`: 8 items, n = 2, 8 new tokens, one round, no warm-up: seconds, numbers meaningless.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see generate_throughput.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from scratch import scratch_dir

TEMPLATE = "Question: {question}\nAnswer:"
STOP = "\nQuestion:"


def build(workdir: Path, n_items: int) -> tuple[Path, Path, list[Any]]:
    """Tokenizer + random tiny checkpoint + the items as JSONL (not timed)."""
    from flowlm.data.builtin import pretrain_docs
    from flowlm.eval.suites import load_suite
    from flowlm.model.config import ModelConfig
    from flowlm.model.hf import save_pretrained
    from flowlm.model.olmo3 import Olmo3
    from flowlm.model.tokenizer import train_tokenizer

    tok = train_tokenizer((d["text"] for d in pretrain_docs(0, max_bytes=400_000)), 8192, workdir / "tok")
    torch.manual_seed(0)
    model = Olmo3(ModelConfig.preset("tiny", vocab_size=len(tok))).eval()
    ckpt = save_pretrained(model, tok, workdir / "ckpt")
    items = list(load_suite("builtin", n=n_items).items)
    data = workdir / "items.jsonl"
    with data.open("w") as f:
        for it in items:
            f.write(json.dumps({"id": it.id, "question": it.question, "answer": it.row["ground_truth"]}) + "\n")
    return ckpt, data, items


def run_flowlm(ckpt: Path, items: list[Any], a: argparse.Namespace) -> dict[str, float]:
    from flowlm.eval.harness import SamplingSettings, build_engine, run_suites
    from flowlm.eval.prompting import PromptFormat
    from flowlm.eval.suites import Suite

    t0 = time.perf_counter()
    suite = Suite("builtin", tuple(items), "builtin", plain_template=TEMPLATE, plain_stop=(STOP,))
    engine = build_engine(ckpt, max_slots=a.slots)
    res = run_suites(engine, [suite], PromptFormat(style="plain"),
                     SamplingSettings(n=a.n, temperature=0.6, top_p=a.top_p, max_new_tokens=a.max_new_tokens), workers=2)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "tokens": engine.stats["generated_tokens"], "items": len(items),
            "pass@1": res["builtin"].summary["pass@1"]}


def lm_eval_task(data: Path, a: argparse.Namespace) -> dict[str, Any]:
    return {
        "task": "flowlm_builtin", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": TEMPLATE.replace("{question}", "{{question}}"),
        "doc_to_target": "{{answer}}", "repeats": a.n,
        "generation_kwargs": {"until": [STOP], "do_sample": True, "temperature": 0.6, "top_p": a.top_p,
                              "max_gen_toks": a.max_new_tokens},
        "metric_list": [{"metric": "exact_match"}],
    }


def run_lm_eval(ckpt: Path, data: Path, items: list[Any], a: argparse.Namespace, tm: Any) -> dict[str, float]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    counter = {"tokens": 0}
    t0 = time.perf_counter()
    lm = HFLM(pretrained=str(ckpt), batch_size=a.peer_batch, device="cpu", dtype="float32", max_length=512)
    _count_generated(lm, counter)
    out = lm_eval.simple_evaluate(model=lm, tasks=[lm_eval_task(data, a)], task_manager=tm, log_samples=False,
                                  random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    dt = time.perf_counter() - t0
    em = next(iter(out["results"].values())).get("exact_match,none")
    return {"seconds": dt, "tokens": counter["tokens"], "items": len(items), "exact_match": em}


def _count_generated(lm: Any, counter: dict[str, int]) -> None:
    """Wrap HFLM's generate call: count the non-pad tokens it produced after each prompt."""
    inner = lm._model_generate
    pad = lm.tokenizer.pad_token_id

    def counted(context: torch.Tensor, max_length: int, stop: list[str], **kw: Any) -> torch.Tensor:
        out = inner(context, max_length, stop, **kw)
        counter["tokens"] += int((out[:, context.shape[1]:] != pad).sum())
        return out

    lm._model_generate = counted


def run_hf_loop(ckpt: Path, data: Path, items: list[Any], a: argparse.Namespace) -> dict[str, float]:
    """Fallback peer: plain transformers `generate`, left-padded batches, n return sequences per prompt."""
    from transformers import AutoModelForCausalLM

    from flowlm.model.tokenizer import load_tokenizer
    from flowlm.verify import verify_row

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    tok = load_tokenizer(ckpt)
    tok.padding_side = "left"
    tokens, right = 0, 0
    per = max(1, a.peer_batch // a.n)
    with torch.inference_mode():
        for b in range(0, len(items), per):
            chunk = items[b:b + per]
            enc = tok([TEMPLATE.replace("{question}", it.question) for it in chunk], return_tensors="pt", padding=True,
                      add_special_tokens=False)
            out = model.generate(**enc, do_sample=True, temperature=0.6, top_p=a.top_p, max_new_tokens=a.max_new_tokens,
                                 num_return_sequences=a.n, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            tokens += int((new != tok.pad_token_id).sum())
            texts = tok.batch_decode(new, skip_special_tokens=True)
            right += sum(verify_row(chunk[i // a.n].row, t.split(STOP)[0]).score for i, t in enumerate(texts))
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "items": len(items)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=128)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus (the eval default); 1.0 = off")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--slots", type=int, default=256, help="flowlm engine slots")
    p.add_argument("--peer-batch", type=int, default=64, help="peer rows per generate batch")
    p.add_argument("--peer", choices=("lm-eval", "hf"), default=None, help="default: lm-eval when installed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    if a.smoke:
        a.items, a.n, a.max_new_tokens, a.rounds = 8, 2, 8, 1
    if a.peer is None:
        import importlib.util

        a.peer = "lm-eval" if importlib.util.find_spec("lm_eval") else "hf"
    torch.set_num_threads(a.threads)
    logging.disable(logging.WARNING)  # lm-eval logs every request batch at INFO/WARNING
    with scratch_dir("evalbench-") as tmp:
        ckpt, data, items = build(tmp, a.items)
        tm = None
        if a.peer == "lm-eval":  # indexing lm-eval's ~10k bundled task files takes ~20 s: once, untimed
            from lm_eval.tasks import TaskManager

            tm = TaskManager()
        if a.peer == "lm-eval":
            peer = lambda: run_lm_eval(ckpt, data, items, a, tm)  # noqa: E731
        else:
            peer = lambda: run_hf_loop(ckpt, data, items, a)  # noqa: E731
        ours = lambda: run_flowlm(ckpt, items, a)  # noqa: E731
        if not a.smoke:  # warm-up: first-call costs (imports, allocator, dataset builder) out of the timed rounds
            small = argparse.Namespace(**{**vars(a), "max_new_tokens": 4})
            run_flowlm(ckpt, items[:8], small)
            (run_lm_eval(ckpt, data, items[:8], small, tm) if a.peer == "lm-eval" else run_hf_loop(ckpt, data, items[:8], small))
        rounds: dict[str, list[dict[str, float]]] = {"flowlm": [], "peer": []}
        for r in range(a.rounds):
            for name, fn in (("flowlm", ours), ("peer", peer)):
                res = fn()
                rounds[name].append(res)
                print(f"round {r + 1} {name:6s}: {res['seconds']:7.1f} s  {res['items'] / res['seconds']:6.2f} items/s  "
                      f"{res['tokens'] / res['seconds']:8.1f} tok/s  ({res['tokens']} tokens)", flush=True)
    med = {k: {"items_s": statistics.median(x["items"] / x["seconds"] for x in v),
               "tok_s": statistics.median(x["tokens"] / x["seconds"] for x in v),
               "tokens": statistics.median(x["tokens"] for x in v)} for k, v in rounds.items()}
    peer_name = "lm-evaluation-harness 0.4 HFLM (generate_until, repeats=n)" if a.peer == "lm-eval" else \
        "plain transformers generate loop (lm-eval not installed)"
    result = {"flowlm": round(med["flowlm"]["items_s"], 3), "peer": round(med["peer"]["items_s"], 3),
              "ratio": round(med["flowlm"]["items_s"] / med["peer"]["items_s"], 3), "unit": "items/s (end to end)",
              "flowlm_tok_s": round(med["flowlm"]["tok_s"], 1), "peer_tok_s": round(med["peer"]["tok_s"], 1),
              "tok_ratio": round(med["flowlm"]["tok_s"] / med["peer"]["tok_s"], 3),
              "flowlm_tokens": med["flowlm"]["tokens"], "peer_tokens": med["peer"]["tokens"], "peer_name": peer_name,
              "items": a.items, "n": a.n, "max_new_tokens": a.max_new_tokens, "top_p": a.top_p, "slots": a.slots,
              "peer_batch": a.peer_batch, "rounds": a.rounds, "threads": a.threads,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "smoke": a.smoke}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
