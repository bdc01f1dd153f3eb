"""Stage kinds, one module each, and the registry they register in (`registry.py`).

Importing this package imports every module in it, so adding a stage kind is adding one file that
calls `register(StageKind(...))`. Built-in kinds: `corpus`, `tokenizer`, `train`, `soup` (and the
ones the other modules here add). `common.py` holds helpers several kinds share.
"""

from __future__ import annotations

import importlib
import pkgutil

from flowlm.flow.stages.registry import (
    StageContext,
    StageKind,
    StageResult,
    declared_inputs,
    default_kinds,
    get_kind,
    kinds,
    register,
    unregister,
)

_HELPERS = {"registry", "common"}
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in _HELPERS and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["StageContext", "StageKind", "StageResult", "declared_inputs", "default_kinds", "get_kind", "kinds",
           "register", "unregister"]
