"""The stage registry: each stage kind registers its typed config, its declared inputs and its function.

A kind is one module in this package that calls `register(StageKind(...))`:

    class SoupStageConfig(Strict):
        kind: Literal["soup"] = "soup"
        from_: list[str] = Field(alias="from")

    def _inputs(ctx, name, cfg):                      # stage names (or paths) whose artifacts it reads
        return [*cfg.from_, ctx.latest("corpus", name)]

    def run(ctx, name, cfg):                          # -> (outputs: {key: path relative to the run dir},
        ...                                           #     metrics: headline numbers for flow.json)

    register(StageKind(name="soup", config=SoupStageConfig, run=run, inputs=_inputs, default_for=("soup",)))

The runner derives a stage's fingerprint from the same `inputs` the stage reads through: a stage sees,
in `ctx.outputs`, only the outputs of the stages it declared, and reading any other stage's outputs is
a `FlowError`. So the declared inputs and the real ones cannot disagree, and a stage is never skipped
while an artifact it read has changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from flowlm.errors import FlowError

if TYPE_CHECKING:
    from flowlm.flow.schema import Recipe
    from flowlm.train.parallel import World

StageOutputs = dict[str, str]
StageResult = tuple[StageOutputs, dict[str, Any]]


@dataclass
class StageContext:
    """What a stage function sees: the run directory, the recipe, the process world and earlier outputs."""

    run_dir: Path
    recipe: "Recipe"
    world: "World"
    outputs: Mapping[str, StageOutputs] = field(default_factory=dict)  # stage name -> its outputs
    show_progress: bool = True

    def path(self, rel: str) -> Path:
        return self.run_dir / rel

    def latest(self, kind: str, before: str) -> str:
        """Name of the last stage of `kind` that comes before stage `before` in the recipe."""
        found = None
        for name, st in self.recipe.stages.items():
            if name == before:
                break
            if st.kind == kind:
                found = name
        if found is None:
            raise FlowError(f"stage '{before}' needs an earlier '{kind}' stage in recipe '{self.recipe.name}'")
        return found

    def model_dir(self, ref: str) -> Path:
        """The model directory a reference names: an earlier stage's `model` output, or a path."""
        if ref in self.outputs:
            outs = self.outputs[ref]
            if "model" not in outs:
                raise FlowError(f"stage '{ref}' has no model output (it produced {sorted(outs)})")
            return self.path(outs["model"])
        return Path(ref)


@dataclass(frozen=True)
class StageKind:
    """One kind of stage.

    Attributes:
        name: the `kind` recipes write; `config` must have `kind: Literal[name] = name`.
        config: the typed config (a `flowlm.config.Strict` model).
        run: `(ctx, stage name, config) -> (outputs, metrics)`.
        inputs: `(ctx, stage name, config) -> [earlier stage names or paths]` it reads.
        uses_model_section: the recipe's `model` section is part of the fingerprint (it shapes the model).
        main_rank_only: under torchrun only rank 0 runs it (it writes shared artifacts); the others wait
            and receive its outputs. False for stages that train or evaluate on every rank.
        default_for: stage names whose `kind` may be left out of a recipe.
        makes_data: its outputs include training data (`store` token store and / or `pairs`) that a
            train stage can name as `data: <stage name>`.
    """

    name: str
    config: type
    run: Callable[[StageContext, str, Any], StageResult]
    inputs: Callable[[StageContext, str, Any], list[str]] = lambda ctx, name, cfg: []
    uses_model_section: bool = False
    main_rank_only: bool = False
    default_for: tuple[str, ...] = ()
    makes_data: bool = False


_KINDS: dict[str, StageKind] = {}


def register(kind: StageKind) -> StageKind:
    """Add (or replace) a stage kind."""
    field_ = getattr(kind.config, "model_fields", {}).get("kind")
    if field_ is None or field_.default != kind.name:
        raise ValueError(f"{kind.config.__name__} needs a field `kind: Literal['{kind.name}'] = '{kind.name}'`")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests that register toy kinds clean up with this)."""
    _KINDS.pop(name, None)


def kinds() -> dict[str, StageKind]:
    """Every registered kind, built-ins first."""
    _load_builtins()
    return dict(_KINDS)


def get_kind(name: str) -> StageKind:
    found = kinds()
    if name not in found:
        raise FlowError(f"unknown stage kind '{name}'; known: {', '.join(sorted(found))}")
    return found[name]


def default_kinds() -> dict[str, str]:
    """Stage name -> kind, for stages whose kind a recipe may leave out."""
    return {n: k.name for k in kinds().values() for n in k.default_for}


def declared_inputs(ctx: StageContext, name: str, cfg: Any) -> list[str]:
    """The stage names / paths stage `name` reads, as its kind declares them (order kept, no repeats)."""
    return list(dict.fromkeys(get_kind(cfg.kind).inputs(ctx, name, cfg)))


def context_for(ctx: StageContext, name: str, inputs: list[str]) -> StageContext:
    """The context stage `name` runs with: its declared inputs' outputs and nothing else."""
    return replace(ctx, outputs=DeclaredOutputs(ctx.outputs, name, inputs))


class DeclaredOutputs(Mapping[str, StageOutputs]):
    """A read-only view of earlier outputs limited to what a stage declared; other stages' are an error."""

    def __init__(self, outputs: Mapping[str, StageOutputs], stage: str, allowed: list[str]) -> None:
        self._outputs, self._stage, self._allowed = outputs, stage, set(allowed)

    def _check(self, key: object) -> None:
        if key in self._outputs and key not in self._allowed:
            raise FlowError(f"stage '{self._stage}' reads the outputs of '{key}', which its kind does not declare "
                            "as an input (add it to the kind's `inputs` so it is fingerprinted)")

    def __getitem__(self, key: str) -> StageOutputs:
        self._check(key)
        if key not in self._allowed:
            raise KeyError(key)
        return self._outputs[key]

    def __contains__(self, key: object) -> bool:
        self._check(key)
        return key in self._allowed and key in self._outputs

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._outputs if k in self._allowed)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _load_builtins() -> None:
    from flowlm.plugins import load_plugins

    import flowlm.flow.stages  # noqa: F401  (importing the package registers the built-in kinds)

    load_plugins()
