"""Contamination check of an eval suite against a run's training data (reported next to the score).

Uses the pipeline's decontamination index (`flowlm.data.decontam.Decontaminator`, decon "SIMPLE"
pretrain mode by default: sampled 5-grams, IDF-weighted overlap, threshold 0.8, exact match required for
short components): the suite's items are the "benchmark", every training document is scanned, and an
item is contaminated when any component (question, answer, both) matches. The share is matched items /
all items; items too short to index (fewer than `min_tokens` words, e.g. `Compute 3 + 4.`) can never
match and are reported as `unchecked`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from flowlm.eval.suites import EvalItem


def _benchmark_items(items: Sequence[EvalItem], name: str) -> list[dict[str, Any]]:
    out = []
    for it in items:
        gt = it.row.get("ground_truth")
        answer = it.demo or (gt if isinstance(gt, str) else "")
        out.append({"benchmark": name, "item_id": it.id, "question": it.question, "answer": answer})
    return out


def contamination_report(items: Sequence[EvalItem], corpus_paths: Iterable[str | Path], *, cfg: Any = None,
                         name: str = "suite") -> dict[str, Any]:
    """`{share, matched, unchecked, items, matched_ids, docs_scanned}` for `items` against the documents
    in `corpus_paths` (`training_texts`)."""
    from flowlm.data.decontam import DecontamCfg, Decontaminator

    items = list(items)
    if not items:
        return {"share": 0.0, "matched": 0, "unchecked": 0, "items": 0, "matched_ids": [], "docs_scanned": 0}
    deco = Decontaminator(_benchmark_items(items, name), cfg or DecontamCfg())
    matched: set[str] = set()
    n_docs = 0
    for path in corpus_paths:
        for doc in training_texts(path):
            n_docs += 1
            matched.update(hit["item_id"] for hit in deco.scan(doc))
    return {"share": len(matched) / len(items), "matched": len(matched), "unchecked": deco.skipped_items,
            "items": len(items), "matched_ids": sorted(matched), "docs_scanned": n_docs}


def training_texts(path: str | Path) -> Iterator[dict[str, Any]]:
    """The documents of one training file as `{id, text}`: a `{"text": ...}` JSONL file (plain or
    compressed) as it is, or a chat / preference file (what an SFT or DPO corpus holds, `flowlm.data.chat`)
    one row per document, its turns' contents and reasoning joined by newlines, or prompt rows (no answer to
    train on, `_is_prompt_file`: the prompt's turns and a string ground truth), also as a benchmark
    spec `NAME=PATH` (an rl stage's `prompts: gsm8k=...`, `flowlm.rl.prompts`). A bad row is a FlowError
    naming FILE:LINE."""
    from flowlm.data.chat import is_chat_file, read_chat_rows
    from flowlm.data.docs import read_jsonl
    from flowlm.rl.prompts import benchmark_spec, suite_rows

    spec = benchmark_spec(str(path))
    if spec is not None:
        yield from _prompt_docs(enumerate(suite_rows(*spec)[0]))
        return
    if _is_prompt_file(path):
        from flowlm.jsonlines import iter_json_objects

        yield from _prompt_docs(iter_json_objects(path))
        return
    if not is_chat_file(path):
        yield from read_jsonl(path)
        return
    for i, row in enumerate(read_chat_rows(path)):
        turns = [m for key in ("messages", "prompt", "chosen", "rejected") for m in row.get(key) or ()]
        parts = [m.get(k) for m in turns for k in ("reasoning_content", "content")]
        yield {"id": str(row.get("id", i)), "text": "\n".join(t for t in parts if isinstance(t, str) and t)}


def _is_prompt_file(path: str | Path) -> bool:
    """Whether a JSONL file holds prompt rows (RL, cold-start or on-policy prompts): its first object has no
    `text`, no preference pair and no answer to train on: `messages` without an assistant turn, or a
    `prompt` (string or messages) without a `completion` / `response`. Chat SFT rows stay chat rows."""
    from flowlm.jsonlines import iter_json_objects

    p = Path(path)
    if not p.is_file() or p.name.endswith(".parquet"):
        return False
    try:
        _, first = next(iter(iter_json_objects(p)), (0, None))
    except Exception:  # noqa: BLE001 - not JSON: the reader that gets the file names the bad line
        return False
    if not isinstance(first, dict) or "text" in first or "chosen" in first or "rejected" in first:
        return False
    msgs = first.get("messages")
    if isinstance(msgs, list):
        return not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs)
    return isinstance(first.get("prompt"), (str, list)) and "completion" not in first and "response" not in first


def _prompt_docs(rows: Iterable[tuple[int, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """`{id, text}` of prompt rows: every turn's content (or the `prompt` string), and the ground truth when it
    is a string (a GSM8K solution, a MATH answer)."""
    for i, row in rows:
        turns = row.get("messages", row.get("prompt"))
        parts = [m.get("content") for m in turns if isinstance(m, dict)] if isinstance(turns, list) else [turns]
        parts.append(row.get("ground_truth"))
        yield {"id": str(row.get("id", i)), "text": "\n".join(t for t in parts if isinstance(t, str) and t)}


def contamination_share(items: Sequence[EvalItem], corpus_paths: Iterable[str | Path]) -> float:
    """Share of `items` found in the training documents of `corpus_paths` (see module docstring)."""
    return contamination_report(items, corpus_paths)["share"]
