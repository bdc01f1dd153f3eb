"""The rollout log of an RL prompt source (`rollouts.jsonl`): one JSON line per rollout batch, its `position`
and the prompt ids drawn and trained (mode async adds those consumed, dropped as stale and pending).

A resumed run restarts from its checkpoint's position, so the records an interrupted attempt wrote past it
are dropped once, before the first new batch (`trim`): the log then holds each position exactly once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RolloutLog:
    """Appends records to `path`; `trim(position)` drops those at or past `position`, once per run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._trimmed = False

    def trim(self, position: int) -> None:
        """Drop the records of batches at or past `position` (an interrupted attempt's); only the first call acts."""
        if self._trimmed:
            return
        self._trimmed = True
        if self.path.exists():
            from flowlm.atomic import atomic_write_text

            lines = [ln for ln in self.path.read_text().splitlines()
                     if ln.strip() and json.loads(ln)["position"] < position]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in lines))

    def append(self, rec: dict[str, Any]) -> None:
        """One JSON line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
