"""The objective contract: what one training step computes, with its own typed config and state.

An objective is a class with
- `name` (how recipes select it: `objective: {name: lm, z_loss: 1e-5}`) and `Config`, its typed config
  (a `ObjectiveConfig` subclass whose `name` field is `Literal[<name>]`);
- `unit`: what the loss is averaged over ("tokens", "sequences", "pairs", ...);
- `count_units(batch) -> int`: loss units in a micro-batch. The engine divides the summed loss by the
  units of the whole accumulation group on all ranks, so accumulation and data parallelism equal one
  big batch for every objective;
- `count_tokens(batch) -> int`: positions the model computes (throughput and MFU);
- `loss(model, batch) -> LossOutput`: the loss as a *sum* over the micro-batch's units, and typed
  metrics (`Sum`, `Mean`, `Max`) that the engine aggregates across micro-batches, accumulation and ranks
  with one host transfer per step;
- optional `setup(model, world)` for what it holds (a frozen reference or teacher, caches), called once
  by the trainer after the model is placed, and `state_dict()` / `load_state_dict()` for state that
  must survive a resume (it goes into every checkpoint);
- optional `end_step(metrics)`, called after every applied optimizer step (not after a skipped
  non-finite one) with the step's reduced metrics: state that adapts to them (the `grpo` objective's
  adaptive entropy coefficient) updates there.

Objectives register with `@register_objective`; `build_objective(cfg)` makes one from its config, and
`parse_objective_config(raw)` validates a recipe's `objective:` mapping against the named class.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, TypeVar, Union

import torch
from pydantic import Field
from torch import nn

from flowlm.config import Strict

Number = Union[int, float, torch.Tensor]


@dataclass(frozen=True)
class Sum:
    """Summed over micro-batches and ranks (counts, totals)."""

    value: Number


@dataclass(frozen=True)
class Mean:
    """Weighted mean: Σ total / Σ count over micro-batches and ranks (per-pair accuracy, mean reward)."""

    total: Number
    count: Number


@dataclass(frozen=True)
class Max:
    """Maximum over micro-batches and ranks."""

    value: Number


Metric = Union[Sum, Mean, Max]


@dataclass
class LossOutput:
    """A micro-batch's loss (a sum over its units; backpropagated after scaling) and its metrics."""

    loss: torch.Tensor
    metrics: dict[str, Metric]


class ObjectiveConfig(Strict):
    """Base of every objective's config; `name` selects the objective."""

    name: str = Field(description="registered objective name")


class Objective:
    """Base class: override `count_units`, `loss`, and what else the objective needs."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    unit: ClassVar[str] = "tokens"
    # What a train stage feeds it: "tokens" (packed LM / chat batches from a token store) or "pairs"
    # (`flowlm.data.pairs.PairDataset` batches); and the epochs a stage runs when it names no `steps`.
    data_kind: ClassVar[str] = "tokens"
    default_epochs: ClassVar[float | None] = None

    def __init__(self, cfg: ObjectiveConfig | None = None, **fields: Any) -> None:
        """From a typed config, or from its fields (`LMObjective(z_loss=1e-4)`)."""
        if cfg is not None and fields:
            raise TypeError("pass a config or its fields, not both")
        self.cfg = cfg if cfg is not None else self.Config(name=self.name, **fields)

    def setup(self, model: nn.Module, world: Any) -> None:
        """Called once by the trainer with the placed (possibly sharded) model."""

    def count_units(self, batch: Mapping[str, Any]) -> int:
        raise NotImplementedError

    def count_tokens(self, batch: Mapping[str, Any]) -> int:
        """Positions the model computes for `batch` (default: every element of `input_ids`)."""
        return int(batch["input_ids"].numel())

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> LossOutput:
        raise NotImplementedError

    def end_step(self, metrics: Mapping[str, Any]) -> None:
        """After an applied optimizer step, with its reduced metrics (default: nothing to adapt)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"objective '{self.name}' holds no state, got keys {sorted(state)}")


_REGISTRY: dict[str, type[Objective]] = {}
O = TypeVar("O", bound=type[Objective])


def register_objective(cls: O) -> O:
    """Class decorator: make `cls` selectable by `cls.name` from recipes and `build_objective`."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a non-empty `name`")
    default = cls.Config.model_fields["name"].default
    if default != cls.name:
        raise ValueError(f"{cls.__qualname__}.Config.name must default to '{cls.name}' (got {default!r})")
    _REGISTRY[cls.name] = cls
    return cls


def objective_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def objective_class(name: str) -> type[Objective]:
    _load_builtins()
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ValueError(f"unknown objective '{name}'{extra}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def parse_objective_config(raw: Any) -> ObjectiveConfig:
    """A recipe's `objective:` (a name, a mapping with `name`, or a config) as the objective's typed config."""
    if isinstance(raw, ObjectiveConfig):
        return raw
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping) or "name" not in raw:
        raise ValueError("objective must be a name or a mapping with 'name' (e.g. {name: lm, z_loss: 1.0e-5})")
    return objective_class(str(raw["name"])).Config.model_validate(dict(raw))


def build_objective(cfg: ObjectiveConfig | Mapping[str, Any] | str) -> Objective:
    """The objective an (untyped or typed) config names, constructed with its typed config."""
    cfg = parse_objective_config(cfg)
    return objective_class(cfg.name)(cfg)


def _load_builtins() -> None:
    from flowlm.plugins import load_plugins

    import flowlm.train.objectives  # noqa: F401  (importing the package registers the built-in objectives)

    load_plugins()
