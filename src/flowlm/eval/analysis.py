"""OlmoBaseEval tools: cluster tasks by how they rank models, and flag tasks whose signal is below their noise.

**Task clustering** (OLMo 3 §3.2.1): tasks that rank models alike measure a similar capability. Each task
is a vector of scores over the same models / checkpoints; rows are standardised (z-scores across models,
so a task's scale does not matter, only its ranking shape) and grouped with Ward's minimum-variance
hierarchical clustering. `ward_linkage` returns the merge table in SciPy's `linkage` format
`[a, b, height, size]` (cluster ids: leaves 0..n-1, the i-th merge n+i), heights
`sqrt(2 n_a n_b / (n_a + n_b)) * ||c_a - c_b||` computed with the Lance-Williams update (O(n^3), fine for
the tens to hundreds of tasks this is for; tested equal to SciPy where SciPy is installed).

**Signal and noise** (Heineman et al. 2025, "Signal and Noise", arXiv 2508.13144): for one task,
signal = spread of the models' final scores relative to their mean (`max_{j,k} |m_j - m_k| / mean(m)`, or
the mean absolute pairwise difference with `spread="mean"`); noise = the relative standard deviation
`std / mean` of one model's score over its last `last_n` checkpoints, averaged over the models. SNR =
signal / noise; a task is flagged `noisy` when its SNR is below `min_snr` (default 1: checkpoint-to-
checkpoint wobble as large as the differences between models). Remedies the report names: more
samples (pass@k with larger n), BPB instead of accuracy, dropping the task from averages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np


def standardize(x: np.ndarray) -> np.ndarray:
    """Z-score every row (a constant row becomes zeros)."""
    mu = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return np.where(sd > 0, (x - mu) / np.where(sd > 0, sd, 1.0), 0.0)


def ward_linkage(x: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Ward linkage of the rows of `x` (Euclidean), in SciPy's `[a, b, height, size]` format."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return np.zeros((0, 4))
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    size = {i: 1 for i in range(n)}
    dist = {(i, j): d[i, j] for i in range(n) for j in range(i + 1, n)}
    active = list(range(n))
    out = np.zeros((n - 1, 4))
    for step in range(n - 1):
        (a, b), h = min(dist.items(), key=lambda kv: (kv[1], kv[0]))
        new = n + step
        na, nb = size[a], size[b]
        for w in active:
            if w in (a, b):
                continue
            nw = size[w]
            daw, dbw = dist[_key(a, w)], dist[_key(b, w)]
            # Lance-Williams for Ward on (unsquared) Euclidean distances
            dist[_key(new, w)] = math.sqrt(max(0.0, ((nw + na) * daw**2 + (nw + nb) * dbw**2 - nw * h**2) / (na + nb + nw)))
        for w in active:
            for u in (a, b):
                dist.pop(_key(u, w), None)
        active = [w for w in active if w not in (a, b)] + [new]
        size[new] = na + nb
        out[step] = (min(a, b), max(a, b), h, na + nb)
    return out


def _key(i: int, j: int) -> tuple[int, int]:
    return (i, j) if i < j else (j, i)


def cut_tree(z: np.ndarray, k: int) -> list[int]:
    """Flat cluster labels (1..k, numbered by first appearance) from the first n-k merges of `z`."""
    n = z.shape[0] + 1
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    parent = list(range(2 * n - 1))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for step in range(n - k):
        a, b = int(z[step, 0]), int(z[step, 1])
        parent[root(a)] = n + step
        parent[root(b)] = n + step
    labels: dict[int, int] = {}
    return [labels.setdefault(root(i), len(labels) + 1) for i in range(n)]


def cluster_tasks(scores: Mapping[str, Sequence[float]], k: int, *, standardized: bool = True) -> dict[str, int]:
    """`{task: cluster}` from `{task: scores over the same models/checkpoints}` (see module docstring)."""
    names = list(scores)
    lengths = {len(v) for v in scores.values()}
    if len(lengths) != 1:
        raise ValueError(f"every task needs scores for the same models; got lengths {sorted(lengths)}")
    x = np.array([list(scores[t]) for t in names], dtype=np.float64)
    labels = cut_tree(ward_linkage(standardize(x) if standardized else x), k)
    return dict(zip(names, labels))


def signal_to_noise(checkpoints: Mapping[str, Sequence[float]], last_n: int = 5, *,
                    spread: Literal["max", "mean"] = "max") -> dict[str, float]:
    """`{signal, noise, snr}` of one task from `{model: its scores over checkpoints, oldest first}`.

    Signal uses each model's final score; noise the relative std over each model's last `last_n`
    checkpoints (models with fewer than 2 are skipped), averaged over models. Undefined ratios: no
    noise and some signal → inf; no signal → 0.
    """
    if last_n < 2:
        raise ValueError(f"last_n must be >= 2, got {last_n}")
    finals = [float(v[-1]) for v in checkpoints.values() if len(v)]
    if len(finals) < 2:
        raise ValueError("signal needs the final scores of at least 2 models")
    mean = abs(float(np.mean(finals)))
    pairs = [abs(a - b) for a, b in combinations(finals, 2)]
    raw = max(pairs) if spread == "max" else float(np.mean(pairs))
    signal = raw / mean if mean > 0 else 0.0
    rel = []
    for v in checkpoints.values():
        tail = np.asarray(v[-last_n:], dtype=np.float64)
        if tail.size >= 2:
            m = abs(float(tail.mean()))
            rel.append(float(tail.std()) / m if m > 0 else 0.0)
    noise = float(np.mean(rel)) if rel else 0.0
    snr = 0.0 if signal == 0 else (math.inf if noise == 0 else signal / noise)
    return {"signal": signal, "noise": noise, "snr": snr}


def snr_table(scores: Mapping[str, Mapping[str, Sequence[float]]], last_n: int = 5, *, min_snr: float = 1.0,
              spread: Literal["max", "mean"] = "max") -> dict[str, dict[str, Any]]:
    """`{task: {signal, noise, snr, noisy}}` from `{task: {model: scores over checkpoints}}`."""
    out = {}
    for task, by_model in scores.items():
        r = signal_to_noise(by_model, last_n, spread=spread)
        out[task] = {**r, "noisy": r["snr"] < min_snr}
    return out


def scores_from_run(run_dir: str | Path, stages: Sequence[str], prefix: str = "eval/") -> dict[str, dict[str, list[float]]]:
    """`{task: {stage: [value at each in-loop eval, oldest first]}}` from the stages' `metrics.jsonl`
    (the train engine's `EvalCallback` records, e.g. `eval/prose/bpb`)."""
    out: dict[str, dict[str, list[float]]] = {}
    for stage in stages:
        path = Path(run_dir) / stage / "metrics.jsonl"
        for line in path.read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            for key, value in rec.items():
                if key.startswith(prefix) and isinstance(value, (int, float)):
                    out.setdefault(key[len(prefix):], {}).setdefault(stage, []).append(float(value))
    return out
