"""Aggregation of an objective's typed metrics over micro-batches, gradient accumulation and ranks.

`Sum` values add up, `Mean(total, count)` becomes Σ total / Σ count, `Max` takes the maximum, each over
every micro-batch of the step on every rank. Tensor values stay on the device until the end of the step:
`StepMetrics.reduce` moves them all to the host in one transfer (plus one all-reduce per kind under
torchrun), so metrics cost no per-micro-batch synchronisation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from flowlm.train.objectives.base import Max, Mean, Metric, Sum


class StepMetrics:
    """Collects the metrics of one optimizer step; `reduce(world)` returns `{name: float}`."""

    def __init__(self) -> None:
        self._kinds: dict[str, type] = {}
        self._values: list[Any] = []  # flat leaves, tensors or numbers
        self._slots: list[tuple[str, str]] = []  # (metric name, role) per leaf

    def add(self, metrics: dict[str, Metric]) -> None:
        for name, m in metrics.items():
            kind = type(m)
            if kind not in (Sum, Mean, Max):
                raise TypeError(f"metric '{name}' must be Sum, Mean or Max, got {kind.__name__}")
            if self._kinds.setdefault(name, kind) is not kind:
                raise TypeError(f"metric '{name}' changed kind within a step ({self._kinds[name].__name__} "
                                f"then {kind.__name__})")
            if kind is Mean:
                self._push(name, "total", m.total)
                self._push(name, "count", m.count)
            else:
                self._push(name, "value", m.value)

    def _push(self, name: str, role: str, value: Any) -> None:
        self._values.append(value.detach().float().reshape(()) if isinstance(value, torch.Tensor) else value)
        self._slots.append((name, role))

    def fetch(self, extra: list[torch.Tensor]) -> list[float]:
        """The step's one host transfer: `extra` 0-d tensors (e.g. loss and gradient norm) together with
        every tensor-valued metric. Returns the values of `extra`; the metrics' are kept for `reduce`."""
        idx = [i for i, v in enumerate(self._values) if isinstance(v, torch.Tensor)]
        device = extra[0].device if extra else (self._values[idx[0]].device if idx else None)
        tensors = [t.float().reshape(()) for t in extra] + [self._values[i].to(device) for i in idx]
        host = torch.stack(tensors).tolist() if tensors else []
        for i, v in zip(idx, host[len(extra):]):
            self._values[i] = v
        return host[: len(extra)]

    def reduce(self, world: Any) -> dict[str, float]:
        """Aggregate over micro-batches here, then over ranks (call `fetch` first on a device)."""
        if any(isinstance(v, torch.Tensor) for v in self._values):
            self.fetch([])
        values = [float(v) for v in self._values]
        sums: dict[tuple[str, str], float] = {}
        maxes: dict[str, float] = {}
        for (name, role), v in zip(self._slots, values):
            if self._kinds[name] is Max:
                maxes[name] = max(maxes.get(name, -float("inf")), v)
            else:
                sums[(name, role)] = sums.get((name, role), 0.0) + v
        if getattr(world, "distributed", False):
            sums = dict(zip(sums, _all_reduce(list(sums.values()), world, dist.ReduceOp.SUM)))
            maxes = dict(zip(maxes, _all_reduce(list(maxes.values()), world, dist.ReduceOp.MAX)))
        out: dict[str, float] = dict(maxes)
        for name, kind in self._kinds.items():
            if kind is Sum:
                out[name] = sums[(name, "value")]
            elif kind is Mean:
                count = sums[(name, "count")]
                out[name] = sums[(name, "total")] / count if count else float("nan")
        return out


def _all_reduce(values: list[float], world: Any, op: Any) -> list[float]:
    if not values:
        return values
    device = world.device if world.device.type == "cuda" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()
