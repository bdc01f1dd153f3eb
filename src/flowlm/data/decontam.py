"""Decontamination of training documents against benchmark items given as local files.

Two modes share one numpy n-gram index (sorted (hash, component) postings, CSR n-gram sets per item
component):
- `posttrain` (Tulu-3 / open-instruct style): every word 8-gram of the document is looked up; an item
  component is a hit when >= 0.5 of its 8-grams occur in a window around the match. Heuristics against
  false positives on stock math phrasing: n-grams shared by more than `max_item_df` items are removed
  from the index and the denominators, purely numeric n-grams are ignored, and at least
  `min_matched` distinct n-grams must match.
- `pretrain` (decon "SIMPLE" style): 5-grams sampled every `stride` tokens seed candidates ("hot"
  n-grams seed nothing); the candidate component is scored by IDF-weighted overlap inside a window
  around the seed; threshold 0.8, with a perfect match required for short components, relaxed linearly
  between `decay_start` and `decay_end` tokens.
Items have components `question`, `answer` and `qa` (both); the best component's score is reported.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np

from flowlm.config import Strict
from flowlm.data.dedup.minhash import WordHasher
from flowlm.errors import FlowError
from flowlm.jsonlines import iter_json_objects, iter_lines, read_bytes

QUESTION_KEYS = ("question", "problem", "prompt", "instruction", "input")
ANSWER_KEYS = ("answer", "solution", "canonical_solution", "response", "output")
_TOKEN = re.compile(r"(?:\w|(?<=\w)[’'`](?=\w)|(?<=\d),(?=\d\d\d))+")
_JOIN = str.maketrans("", "", "’'`,")


class DecontamCfg(Strict):
    mode: Literal["posttrain", "pretrain"] = "pretrain"
    ngram: int | None = None  # default 8 (posttrain) / 5 (pretrain)
    threshold: float | None = None  # default 0.5 (posttrain) / 0.8 (pretrain)
    stride: int = 2  # pretrain: sample a document n-gram every `stride` tokens
    min_tokens: int = 8  # components shorter than this are not indexed
    exact_below: int = 12  # posttrain: components shorter than this must match completely
    max_item_df: int = 10  # posttrain: n-grams in more items than this are "common phrasing"
    min_matched: int = 3  # posttrain: distinct matched n-grams needed for a hit
    hot_df: int = 50  # pretrain: n-grams in more components than this seed no candidates
    decay_start: int = 20
    decay_end: int = 50


def _n(cfg: DecontamCfg) -> int:
    return cfg.ngram or (8 if cfg.mode == "posttrain" else 5)


def _thr(cfg: DecontamCfg) -> float:
    return cfg.threshold if cfg.threshold is not None else (0.5 if cfg.mode == "posttrain" else 0.8)


def tokenize(text: str, with_spans: bool = True) -> tuple[list[str], list[tuple[int, int]]]:
    """Lowercased word tokens (and char spans in `text`). Apostrophes inside words and thousands
    commas are deleted rather than split on, so case / whitespace / punctuation edits leave the
    tokens unchanged ("Janet’s" == "janets", "1,000" == "1000")."""
    text = text.lower()
    if not with_spans:
        return [t.translate(_JOIN) for t in _TOKEN.findall(text)], []
    toks, spans = [], []
    for m in _TOKEN.finditer(text):
        toks.append(m.group().translate(_JOIN))
        spans.append(m.span())
    return toks, spans


def ngram_hashes(words: np.ndarray, n: int) -> np.ndarray:
    if words.size < n:
        return np.zeros(0, dtype=np.uint64)
    m = words.size - n + 1
    h = words[:m].copy()
    for j in range(1, n):
        h *= np.uint64(0x100000001B3)
        h ^= words[j:j + m]
    return h


def load_benchmark(path: str | Path, name: str | None = None) -> list[dict[str, Any]]:
    """Items {benchmark, item_id, question, answer} from jsonl (.gz/.zst) or a JSON array file.

    A file that yields no item (empty, or no row with a question / answer field) is a FlowError: a
    decontamination against nothing would pass every document silently. So is a row without either
    field among rows that have them (FILE:LINE, or FILE: item N of a JSON array): it would be left out of
    the index without a word.
    """
    path = Path(path)
    if not path.exists():
        raise FlowError(f"{path}: benchmark file not found")
    if path.is_dir():
        raise FlowError(f"{path}: is a directory, not a benchmark file (name the jsonl / json file in it)")
    rows = _benchmark_rows(path)
    name = name or path.parent.name or path.stem
    items, empty = [], []
    for i, (where, r) in enumerate(rows):
        q = next((r[k] for k in QUESTION_KEYS if isinstance(r.get(k), str)), "")
        a = next((r[k] for k in ANSWER_KEYS if isinstance(r.get(k), str)), "")
        if q or a:
            items.append({"benchmark": name, "item_id": str(r.get("task_id", r.get("key", i))),
                          "question": q, "answer": a})
        else:
            empty.append(where)
    looked = ", ".join(QUESTION_KEYS + ANSWER_KEYS)
    if not items:
        if not rows:
            raise FlowError(f"{path}: no benchmark items (the file is empty)")
        raise FlowError(f"{path}: no benchmark items (no question/answer fields in its {len(rows)} row(s); "
                        f"looked for {looked})")
    if empty:
        more = f" (and {len(empty) - 1} more such row(s))" if len(empty) > 1 else ""
        raise FlowError(f"{empty[0]}: benchmark row without a question/answer text field{more}; looked for {looked}")
    return items


def _benchmark_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """`(where, row)` for the rows of a benchmark file: JSON lines (`where` FILE:LINE), or one JSON array of
    objects (FILE: item N); bad JSON is a FlowError naming FILE[:LINE]."""
    with contextlib.closing(iter_lines(path)) as lines:  # the first non-blank line says which format
        first = next(lines, None)
    if first is None or not first[1].lstrip().startswith(b"["):
        return [(f"{path}:{line}", row) for line, row in iter_json_objects(path)]
    try:
        rows = json.loads(read_bytes(path))
    except UnicodeDecodeError:
        raise FlowError(f"{path}: invalid UTF-8 in benchmark file") from None
    except json.JSONDecodeError as e:
        raise FlowError(f"{path}:{e.lineno}: invalid JSON in benchmark file ({e.msg})") from None
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise FlowError(f"{path}: item {i} of the JSON array is {type(r).__name__}, not an object")
    return [(f"{path}: item {i}", r) for i, r in enumerate(rows)]


@dataclass
class _Index:
    post_hash: np.ndarray  # sorted n-gram hashes
    post_comp: np.ndarray  # component id per posting
    comp_off: np.ndarray  # CSR offsets into comp_grams
    comp_grams: np.ndarray  # per-component sorted unique n-gram hashes
    comp_len: np.ndarray  # component length in tokens
    comps: list[tuple[int, str]]  # (item index, component name)
    comp_idf: np.ndarray  # IDF of each entry of comp_grams


class Decontaminator:
    """Build once from benchmark items, then `scan(doc)` -> list of hits."""

    def __init__(self, items: list[dict[str, Any]], cfg: DecontamCfg) -> None:
        self.items, self.cfg, self.n, self.thr = items, cfg, _n(cfg), _thr(cfg)
        self.hasher = WordHasher()
        self.skipped_items = 0
        self.index = self._build()

    def _grams(self, text: str, drop_numeric: bool = False, with_spans: bool = True) -> tuple[np.ndarray, list[tuple[int, int]]]:
        toks, spans = tokenize(text, with_spans)
        self._last_len = len(toks)
        g = ngram_hashes(self.hasher(toks), self.n)
        if drop_numeric and g.size:
            # purely numeric n-grams ("2 3 4 5 6 7 8 9") say nothing about which item it is
            num = np.array([t.isdigit() for t in toks], dtype=np.int64)
            run = np.convolve(num, np.ones(self.n, dtype=np.int64), mode="valid")
            g = g[run < self.n]
        return g, spans

    def _build(self) -> _Index:
        comps, gram_sets, lens = [], [], []
        for i, it in enumerate(self.items):
            parts = {"question": it["question"], "answer": it["answer"],
                     "qa": (it["question"] + "\n" + it["answer"]).strip()}
            added = False
            for cname, text in parts.items():
                g, _ = self._grams(text, self.cfg.mode == "posttrain", with_spans=False)
                n_tok = self._last_len
                if n_tok >= self.cfg.min_tokens and g.size:
                    comps.append((i, cname))
                    gram_sets.append(np.unique(g))
                    lens.append(n_tok)
                    added = True
            self.skipped_items += not added
        all_g = np.concatenate(gram_sets) if gram_sets else np.zeros(0, np.uint64)
        comp_ids = np.repeat(np.arange(len(gram_sets)), [g.size for g in gram_sets])
        # document frequency counted per *item* (an item's 3 components share n-grams)
        item_of = np.array([c[0] for c in comps], dtype=np.int64)[comp_ids] if comps else comp_ids
        uniq, counts = _item_df(all_g, item_of)
        if self.cfg.mode == "posttrain":  # drop common phrasing from the index and the denominators
            keep = ~np.isin(all_g, uniq[counts > self.cfg.max_item_df])
            all_g, comp_ids = all_g[keep], comp_ids[keep]
            sizes = np.bincount(comp_ids, minlength=len(gram_sets))
            gram_sets = np.split(all_g, np.cumsum(sizes)[:-1])  # all_g is still grouped by component
        order = np.argsort(all_g, kind="stable")
        n_items = max(len(self.items), 1)
        comp_grams = np.concatenate(gram_sets) if gram_sets else np.zeros(0, np.uint64)
        # IDF over items: n-grams many items share (stock phrasing) weigh little in pretrain scores
        idf_u = np.log1p(n_items / np.maximum(counts, 1))
        comp_idf = idf_u[np.searchsorted(uniq, comp_grams)] if uniq.size else np.zeros(0)
        return _Index(all_g[order], comp_ids[order],
                      np.concatenate([[0], np.cumsum([g.size for g in gram_sets])]).astype(np.int64),
                      comp_grams, np.array(lens, dtype=np.int64), comps, comp_idf.astype(np.float64))

    def threshold_for(self, comp_len: int) -> float:
        """Short components must match perfectly (posttrain: below `exact_below` tokens; pretrain:
        up to `decay_start`, relaxing linearly to the threshold at `decay_end`)."""
        c = self.cfg
        if c.mode == "posttrain":
            return 1.0 if comp_len < c.exact_below else self.thr
        if comp_len >= c.decay_end:
            return self.thr
        if comp_len <= c.decay_start:
            return 1.0
        f = (comp_len - c.decay_start) / (c.decay_end - c.decay_start)
        return 1.0 - f * (1.0 - self.thr)

    def _seeds(self, g: np.ndarray) -> dict[int, list[int]]:
        """{component id: document n-gram positions that hit it}."""
        ix, c = self.index, self.cfg
        pos = np.arange(0, g.size, c.stride if c.mode == "pretrain" else 1)
        lo = np.searchsorted(ix.post_hash, g[pos], "left")
        hi = np.searchsorted(ix.post_hash, g[pos], "right")
        hit = hi > lo
        if c.mode == "pretrain":
            hit &= (hi - lo) <= c.hot_df
        out: dict[int, list[int]] = {}
        for p, a, b in zip(pos[hit].tolist(), lo[hit].tolist(), hi[hit].tolist()):
            for comp in ix.post_comp[a:b].tolist():
                out.setdefault(comp, []).append(p)
        return out

    def scan(self, doc: dict[str, Any]) -> list[dict[str, Any]]:
        """Hits (best component per item and region) for one document."""
        g, spans = self._grams(doc["text"])
        if not g.size:
            return []
        ix, best = self.index, {}
        for comp, seeds in self._seeds(g).items():
            grams = ix.comp_grams[ix.comp_off[comp]:ix.comp_off[comp + 1]]
            if not grams.size:
                continue
            L = int(ix.comp_len[comp])
            for w0, w1 in _clusters(sorted(seeds), 2 * L):
                lo, hi = max(0, w0 - 2 * L), min(g.size, w1 + 2 * L + 1)
                hit = self._score(comp, grams, g[lo:hi], lo, spans, doc)
                if hit and hit["score"] > best.get(hit["item_key"], {"score": -1})["score"]:
                    best[hit["item_key"]] = hit
        return list(best.values())

    def _score(self, comp: int, grams: np.ndarray, window: np.ndarray, lo: int,
               spans: list[tuple[int, int]], doc: dict[str, Any]) -> dict[str, Any] | None:
        ix = self.index
        present = np.isin(grams, window)
        n_match = int(present.sum())
        if self.cfg.mode == "posttrain":
            if n_match < min(self.cfg.min_matched, grams.size):
                return None
            score = n_match / grams.size
        else:
            w = ix.comp_idf[ix.comp_off[comp]:ix.comp_off[comp + 1]]
            score = float(w[present].sum() / max(w.sum(), 1e-12))
        if score < self.threshold_for(int(ix.comp_len[comp])):
            return None
        where = lo + np.nonzero(np.isin(window, grams[present]))[0]
        item_i, cname = ix.comps[comp]
        item = self.items[item_i]
        start = spans[int(where.min())][0]
        end = spans[min(int(where.max()) + self.n - 1, len(spans) - 1)][1]
        return {"doc_id": doc.get("id"), "benchmark": item["benchmark"], "item_id": item["item_id"],
                "item_key": (item["benchmark"], item["item_id"]), "component": cname,
                "span": [start, end], "score": round(score, 4), "mode": self.cfg.mode}


def _item_df(grams: np.ndarray, item_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique n-grams and the number of distinct items containing each (sort-based, no Python loop)."""
    if not grams.size:
        return grams, np.zeros(0, dtype=np.int64)
    o = np.lexsort((item_of, grams))
    g, it = grams[o], item_of[o]
    new_pair = np.concatenate([[True], (g[1:] != g[:-1]) | (it[1:] != it[:-1])])
    g = g[new_pair]
    return np.unique(g, return_counts=True)


def _clusters(pos: list[int], gap: int) -> list[tuple[int, int]]:
    """Group sorted seed positions into regions separated by more than `gap` tokens."""
    out, s, e = [], pos[0], pos[0]
    for p in pos[1:]:
        if p - e > gap:
            out.append((s, e))
            s = p
        e = p
    out.append((s, e))
    return out


def decontaminate(docs: Iterable[dict[str, Any]], deco: Decontaminator,
                  ) -> Iterable[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Yield (doc, hits) pairs; the caller drops documents with hits and writes the report."""
    for d in docs:
        hits = deco.scan(d)
        for h in hits:
            h.pop("item_key", None)
        yield d, hits
