"""Batches as the engine sees them: dicts whose values split into micro-batches by a declared rule.

A batch is a mapping of names to tensors (split along dim 0), lists or tuples (split by position), or
any other value named in the rule's `shared` keys (copied whole into every micro-batch). `SplitRule.group`
keeps consecutive rows together: 1 for packed LM rows; a preference batch keeps chosen and rejected of
one pair in separate keys, so its group is 1 as well; an RL batch of G completions per prompt laid out
prompt by prompt uses G. Each data source declares its rule as `split_rule`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from flowlm.errors import ConfigError


@dataclass(frozen=True)
class SplitRule:
    """How a batch splits into micro-batches: rows in groups of `group`; `shared` keys are copied whole."""

    group: int = 1
    shared: frozenset[str] = field(default_factory=frozenset)


def batch_rows(batch: Mapping[str, Any], rule: SplitRule = SplitRule()) -> int:
    """Rows of a batch (every split value must agree)."""
    sizes = {k: len(v) for k, v in batch.items() if k not in rule.shared}
    if not sizes:
        raise ConfigError("a batch needs at least one value that splits by rows")
    if len(set(sizes.values())) != 1:
        raise ConfigError(f"batch values disagree on the number of rows: {sizes}")
    return next(iter(sizes.values()))


def split_batch(batch: Mapping[str, Any], n: int, rule: SplitRule = SplitRule()) -> list[dict[str, Any]]:
    """`n` equal micro-batches (whole groups each); n = 1 returns the batch itself (as a dict)."""
    rows = batch_rows(batch, rule)
    if n <= 0 or rule.group <= 0 or rows % rule.group or (rows // rule.group) % n:
        raise ConfigError(f"a batch of {rows} rows in groups of {rule.group} does not split into {n} "
                          "equal micro-batches")
    if n == 1:
        return [dict(batch)]
    size = rows // n
    return [{k: v if k in rule.shared else v[i * size:(i + 1) * size] for k, v in batch.items()}
            for i in range(n)]


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors moved to `device` (non-blocking); other values as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
