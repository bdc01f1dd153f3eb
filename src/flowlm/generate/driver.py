"""What every generation backend shares: the run-to-completion half of the interface, and inflight updates.

A backend implements `submit`, `step` and `has_unfinished`; `stream` and `generate` follow from them
(`Driver`). `InflightUpdates` gives `update_weights` its contract (applied between two steps, queued while
one runs); a backend says how to check and how to load a state dict.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from flowlm.generate.params import Result, SamplingParams
from flowlm.generate.prompts import Prompt


class Driver:
    """Mixin: `stream` and `generate` on top of a backend's `submit` / `step` / `has_unfinished`."""

    def stream(self) -> Iterator[Result]:
        """Step until every submitted request has finished, yielding results as they finish."""
        while self.has_unfinished():  # type: ignore[attr-defined]
            yield from self.step()  # type: ignore[attr-defined]

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] | None = None,
                 ) -> list[Result]:
        """Submit all prompts, run to completion, return results in prompt order."""
        plist = params if isinstance(params, (list, tuple)) else [params] * len(prompts)
        ids = [self.submit(p, sp) for p, sp in zip(prompts, plist)]  # type: ignore[attr-defined]
        by_id = {r.request_id: r for r in self.stream()}
        return [by_id[i] for i in ids]


class InflightUpdates:
    """Mixin: `update_weights` lands between two engine steps. A backend sets `version`, `_lock` (its request
    tables), `_step_lock` (held for a whole step, which starts with `_apply_pending()`), `_pending = None` and
    `_waiters = []`, and implements `_checked_state` and `_load_state`."""

    version: int
    _lock: threading.Lock
    _step_lock: threading.Lock
    _pending: tuple[Any, int, bool] | None
    _waiters: list[threading.Event]

    def update_weights(self, weights: Any, version: int | None = None, strict: bool = True,
                       wait: bool = True) -> int:
        """Swap in new weights between two steps; returns the new version (default: the latest + 1).

        In-flight sequences are neither dropped nor restarted; the tokens sampled after the swap carry the new
        version. Safe to call from another thread: when a step is running the weights are queued and applied
        at the start of the next step (a queued update is replaced by a newer one), and `wait` blocks until
        then. A state dict the backend rejects raises here, in the caller's thread.
        """
        state = self._checked_state(weights.state_dict() if hasattr(weights, "state_dict") else weights, strict)
        applied = threading.Event()
        with self._lock:
            base = self._pending[1] if self._pending else self.version
            new_version = base + 1 if version is None else int(version)
            self._pending = (state, new_version, strict)
            self._waiters.append(applied)
        if self._step_lock.acquire(blocking=False):  # between steps: apply now
            try:
                self._apply_pending()
            finally:
                self._step_lock.release()
        elif wait:
            applied.wait()
        return new_version

    def _apply_pending(self) -> None:
        """Load the queued update, if any (the caller holds the step lock). A failed load raises here and
        leaves the version as it was; a caller waiting for it is released either way."""
        with self._lock:
            pending, self._pending = self._pending, None
            waiters, self._waiters = self._waiters, []
        try:
            if pending is not None:
                self._load_state(*pending)
        finally:
            for event in waiters:
                event.set()

    def _checked_state(self, state: dict[str, Any], strict: bool) -> dict[str, Any]:
        """`state` as the backend loads it; raise on one it cannot load."""
        raise NotImplementedError

    def _load_state(self, state: dict[str, Any], version: int, strict: bool) -> None:
        """Load `state` and set `self.version = version`."""
        raise NotImplementedError
