"""The RL prompt streams: seeded per-epoch orders over the prompts, one stream or one per domain.

`RolloutSource` (`flowlm.rl.source`) draws every prompt through `PromptStreams.draw`, in both the sync
mode's rounds and the async actor's dispatch (`flowlm.rl.actor`):
- without `domain_weights` there is one stream `*` over all prompts; with them, one stream per domain
  of positive weight (a row's domain is its verifier name), chosen per draw by weight;
- each stream walks a permutation seeded by (seed, stream number, epoch), cached for its epoch;
- a prompt whose latest group reached `skip_solved_threshold` is skipped (counted in `skipped_solved`;
  open-instruct `no_resampling_pass_rate`); a stream whose every prompt is skipped leaves the draw, and
  when none is left the draw is a FlowError.

The state a checkpoint keeps is each stream's (epoch, cursor): the cursors have passed every prompt drawn.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from flowlm.errors import FlowError


class PromptStreams:
    """Prompt indices drawn from seeded per-epoch streams (see module docstring)."""

    def __init__(self, domains: list[str], weights: dict[str, float] | None, seed: int,
                 skip_solved_threshold: float | None) -> None:
        self.seed, self.threshold = seed, skip_solved_threshold
        if weights is None:
            self.streams = {"*": self._stream(list(range(len(domains))), 1.0, 0)}
            return
        missing = sorted(d for d, w in weights.items() if w > 0 and d not in domains)
        if missing:
            raise FlowError(f"rl prompts: domain_weights name domains without prompts: {missing} "
                            f"(domains: {sorted(set(domains))})")
        named = [(d, w) for d, w in sorted(weights.items()) if w > 0]
        self.streams = {d: self._stream([i for i, x in enumerate(domains) if x == d], float(w), k)
                        for k, (d, w) in enumerate(named)}

    @staticmethod
    def _stream(indices: list[int], weight: float, number: int) -> dict[str, Any]:
        return {"indices": indices, "weight": weight, "epoch": 0, "cursor": 0, "number": number}

    def names(self) -> list[str]:
        return list(self.streams)

    def state_dict(self) -> dict[str, tuple[int, int]]:
        return {k: (s["epoch"], s["cursor"]) for k, s in self.streams.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, (epoch, cursor) in state.items():
            if key not in self.streams:
                raise FlowError(f"rl resume: prompt stream '{key}' is not in this run's prompts")
            self.streams[key]["epoch"], self.streams[key]["cursor"] = int(epoch), int(cursor)

    def draw(self, rng: np.random.Generator, live: list[str], pass_rate: dict[int, float],
             stats: Counter[str]) -> int:
        """The next prompt of a stream chosen by weight among `live` (streams whose prompts are all
        skipped as solved are removed from `live`); FlowError when none is left."""
        while live:
            w = np.array([self.streams[k]["weight"] for k in live])
            key = live[int(rng.choice(len(live), p=w / w.sum()))] if len(live) > 1 else live[0]
            idx = self._next_index(self.streams[key], pass_rate, stats)
            if idx is not None:
                return idx
            live.remove(key)
        raise FlowError(f"rl prompts: every prompt is solved at or above skip_solved_threshold "
                        f"{self.threshold}; nothing left to train on")

    def _next_index(self, stream: dict[str, Any], pass_rate: dict[int, float], stats: Counter[str]) -> int | None:
        """The stream's next prompt not skipped as solved; None once the rest of this epoch and the whole
        next one are all solved. (Not after len(indices) solved in a row: a run of them can span two
        epochs' orders while unsolved prompts remain.)"""
        indices, thr = stream["indices"], self.threshold
        for _ in range(max(0, len(indices) - stream["cursor"]) + len(indices)):
            if stream["cursor"] >= len(indices):
                stream["epoch"], stream["cursor"] = stream["epoch"] + 1, 0
            idx = indices[int(self._perm(stream)[stream["cursor"]])]
            stream["cursor"] += 1
            if thr is not None and pass_rate.get(idx, 0.0) >= thr:
                stats["skipped_solved"] += 1
                continue
            return idx
        return None

    def _perm(self, stream: dict[str, Any]) -> np.ndarray:
        """The stream's order in its current epoch (seeded by (seed, stream, epoch); cached)."""
        if stream.get("perm_epoch") != stream["epoch"]:
            rng = np.random.default_rng([self.seed, stream["number"], stream["epoch"]])
            stream["perm"], stream["perm_epoch"] = rng.permutation(len(stream["indices"])), stream["epoch"]
        return stream["perm"]
