"""Typed recipe schema: the whole flow's configuration, validated once at load and frozen.

A recipe names a model preset, the evaluation settings, and an ordered mapping of stages. Each stage
has a `kind` (registered in `flowlm.flow.stages`; some stage names imply theirs: `pretrain`, `midtrain`
and `long_context` are `train` stages) and reads the artifacts of earlier stages by name. The stage
configs are the registered kinds' own config classes: `parse_recipe` validates against all of them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from flowlm.config import Strict, validate
from flowlm.errors import FlowError


class ModelSection(Strict):
    """A model preset plus field overrides (checked against the preset's fields at load)."""

    preset: str = "tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)


class EvalConfig(Strict):
    """BPB evaluation after each stage (OLMES definition) and held-out loss."""

    tasks: list[str] | None = None
    max_items: int = Field(200, gt=0)
    batch_tokens: int = Field(4096, gt=0)
    heldout_docs: int = Field(64, ge=0)


class Recipe(Strict):
    """The whole flow. Validate raw recipes with `parse_recipe` (it knows every registered stage kind)."""

    name: str
    seed: int = 0
    threads: int | None = Field(None, gt=0)
    model: ModelSection = ModelSection()
    eval: EvalConfig = EvalConfig()
    stages: dict[str, Any]

    @field_validator("stages", mode="before")
    @classmethod
    def _default_kinds(cls, value: Any) -> Any:
        from flowlm.flow.stages import default_kinds

        if not isinstance(value, dict):
            return value
        if not value:
            raise ValueError("no stages (a recipe runs at least one stage)")
        defaults = default_kinds()
        out = {}
        for name, cfg in value.items():
            if isinstance(cfg, dict) and "kind" not in cfg:
                if name not in defaults:
                    hint = difflib.get_close_matches(name, list(defaults), n=1)
                    extra = f"did you mean '{hint[0]}'? or " if hint else ""
                    raise ValueError(f"stage '{name}' needs a kind ({extra}set kind: one of "
                                     f"{', '.join(sorted(set(defaults.values())))})")
                cfg = {"kind": defaults[name], **cfg}
            out[name] = cfg
        return out

    @model_validator(mode="after")
    def _check_references(self) -> "Recipe":
        """Every stage a stage reads (by its kind's declared inputs) comes earlier in the recipe."""
        from flowlm.flow.stages import StageContext, declared_inputs

        ctx = StageContext(run_dir=Path("."), recipe=self, world=None)  # type: ignore[arg-type]
        seen: list[str] = []
        for name, stage in self.stages.items():
            if not isinstance(stage, BaseModel):
                break  # untyped (base class): nothing to check
            try:
                refs = declared_inputs(ctx, name, stage)
            except FlowError as exc:
                raise ValueError(str(exc)) from None
            for ref in refs:
                if "/" not in ref and ref not in seen:
                    raise ValueError(f"stage '{name}' refers to '{ref}', which is not an earlier stage")
            seen.append(name)
        return self


_MODELS: dict[tuple[type, ...], type[Recipe]] = {}


def recipe_model() -> type[Recipe]:
    """`Recipe` whose `stages` values are a union of every registered kind's config (tagged by `kind`)."""
    from flowlm.flow.stages import kinds

    configs = tuple(k.config for k in kinds().values())
    if configs not in _MODELS:
        union = Annotated[Union[configs], Field(discriminator="kind")] if len(configs) > 1 else configs[0]
        _MODELS[configs] = create_model("Recipe", __base__=Recipe, stages=(dict[str, union], ...))
    return _MODELS[configs]


def parse_recipe(raw: dict[str, Any], origin: str) -> Recipe:
    """Validate a raw recipe; the first problem is a one-line `ConfigError` naming the dotted key."""
    return validate(recipe_model(), raw, origin)
