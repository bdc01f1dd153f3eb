"""Objectives: what one training step computes; the engine owns everything else.

The contract (`Objective`, typed metrics `Sum` / `Mean` / `Max`, `LossOutput`, the registry) is in
`base.py`. Every module of this package is imported here, so adding an objective is adding one file
that defines a class decorated with `@register_objective`.
"""

from __future__ import annotations

import importlib
import pkgutil

from flowlm.train.objectives.base import (
    LossOutput,
    Max,
    Mean,
    Metric,
    Objective,
    ObjectiveConfig,
    Sum,
    build_objective,
    objective_class,
    objective_names,
    parse_objective_config,
    register_objective,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "LossOutput", "Max", "Mean", "Metric", "Objective", "ObjectiveConfig", "Sum", "build_objective",
    "objective_class", "objective_names", "parse_objective_config", "register_objective",
]
