"""A data source fed by producers (the RL rollout queue), with exact resume of what was not consumed.

Producer threads `put` rows (dicts of tensors, lists or numbers, one training row each, e.g. one
completion with its advantages); the trainer iterates batches of `batch_size` rows, collated by
`collate` (default: stack tensors, keep other values as lists). `state_dict()` holds the number of
batches consumed and every row put but not yet consumed, so a checkpoint taken after a batch resumes
with exactly the rows the uninterrupted run would have trained on next: nothing buffered is lost and
nothing consumed is replayed. A batch that does not arrive within `timeout` seconds is a `FlowError`
(a stalled producer fails loudly instead of hanging the run).
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from flowlm.errors import ConfigError, FlowError
from flowlm.train.batch import SplitRule

Row = Mapping[str, Any]


def stack_rows(rows: Sequence[Row]) -> dict[str, Any]:
    """Tensors stacked along a new dim 0; any other value gathered into a list."""
    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


class StreamSource:
    """Batches of `batch_size` rows from a thread-safe queue that producers fill with `put`."""

    def __init__(self, batch_size: int, *, collate: Callable[[Sequence[Row]], dict[str, Any]] = stack_rows,
                 timeout: float | None = 600.0, split_rule: SplitRule = SplitRule()) -> None:
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.batch_size, self.collate, self.timeout, self.split_rule = batch_size, collate, timeout, split_rule
        self.consumed = 0  # batches handed to the trainer
        self._rows: deque[Row] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, row: Row) -> None:
        """Append one row (producers call this from any thread)."""
        with self._cond:
            if self._closed:
                raise FlowError("stream source is closed; no more rows are accepted")
            self._rows.append(row)
            self._cond.notify_all()

    def close(self) -> None:
        """No more rows will come: iteration stops once fewer than a batch remain."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            with self._cond:
                ready = self._cond.wait_for(lambda: len(self._rows) >= self.batch_size or self._closed,
                                            timeout=self.timeout)
                if not ready:
                    raise FlowError(f"stream source: no batch of {self.batch_size} rows within {self.timeout} s "
                                    f"({len(self._rows)} buffered); is the producer alive?")
                if len(self._rows) < self.batch_size:
                    return
                rows = [self._rows.popleft() for _ in range(self.batch_size)]
                self.consumed += 1
            yield self.collate(rows)

    def state_dict(self) -> dict[str, Any]:
        with self._cond:
            return {"consumed": self.consumed, "pending": [copy.copy(dict(r)) for r in self._rows]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the count and put the saved rows back in front of anything already queued."""
        with self._cond:
            self.consumed = int(state["consumed"])
            for row in reversed(state.get("pending", [])):
                self._rows.appendleft(row)
            self._cond.notify_all()
