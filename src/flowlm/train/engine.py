"""The one training loop. Objectives say what a step computes; callbacks add evals and sinks.

The engine owns: AdamW with decay/no-decay groups, the LR schedule, unit-weighted gradient
accumulation (a step over k micro-batches equals one step over their concatenation, whatever unit the
objective averages over: tokens, sequences, pairs), gradient clipping, fp32/bf16, optional compile,
metrics (the objective's typed metrics aggregated over micro-batches and ranks), atomic checkpoints and
exact resume (model, optimizer, loader position, RNG states, the objective's state, the callbacks'
state and the metrics gathered so far; after `kill -9` and a resume the per-step losses and the stage's
summary equal an uninterrupted run's).
Data parallelism is applied to the model from outside (`flowlm.train.parallel`); here it only shows as
the all-reduced token count and as FSDP2's gradient-sync switch.

A step whose loss (summed over micro-batches and ranks) or gradient norm is not finite is skipped whole:
no optimizer step (parameters and AdamW state untouched), gradients dropped, one `warning: step N: ...`
line, `step_skipped` 1 in its record; after `max_nonfinite_steps` such steps in a row the run stops
with a FlowError. The step still counts: the batch was consumed, `step` advances, and with it the LR
schedule (a pure function of `step`), so a checkpoint after a skipped step resumes exactly. A step whose
global batch holds no loss unit at all (RL: every group filtered as uninformative) applies no optimizer
step either (`step_empty` 1): its gradient is zero, and AdamW would still move the weights along its old
moments, by about a normal step's size. It too counts as a step. An objective with `end_step(metrics)`
is called after every applied step with the step's reduced metrics (the `grpo` objective's adaptive
entropy coefficient).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from flowlm.errors import ConfigError, FlowError
from flowlm.train import checkpoint as ckpt
from flowlm.train.aggregate import StepMetrics
from flowlm.train.batch import SplitRule, split_batch, to_device
from flowlm.train.config import EngineConfig, OptimConfig
from flowlm.train.cpu_malloc import keep_freed_memory
from flowlm.train.metrics import MetricsLogger, make_progress, peak_flops
from flowlm.train.objectives import Objective
from flowlm.train.parallel import World, all_reduce_sum, barrier
from flowlm.train.schedule import lr_at


class Callback:
    """Hooks into the loop. Subclass and override what you need; all default to doing nothing."""

    def on_fit_start(self, trainer: "Trainer") -> None:
        pass

    def on_step_end(self, trainer: "Trainer", step: int, record: dict[str, Any]) -> None:
        pass

    def on_fit_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """What this callback gathered; saved in every checkpoint so a resumed run loses none of it."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EvalCallback(Callback):
    """Runs `fn(model) -> {name: value}` before training (step 0), every `every` steps, and at the end."""

    def __init__(self, fn: Callable[[nn.Module], dict[str, float]], every: int = 0) -> None:
        self.fn, self.every = fn, every
        self.history: list[dict[str, Any]] = []

    def _run(self, trainer: "Trainer", step: int) -> None:
        if self.history and self.history[-1]["step"] == step:
            return
        trainer.model.eval()
        with torch.no_grad():
            values = self.fn(trainer.model)
        trainer.model.train()
        record = {"step": step, **{f"eval/{k}": v for k, v in values.items()}}
        self.history.append(record)
        trainer.logger.log(record)

    def on_fit_start(self, trainer: "Trainer") -> None:
        if trainer.step == 0:
            self._run(trainer, 0)

    def on_step_end(self, trainer: "Trainer", step: int, record: dict[str, Any]) -> None:
        if self.every and step % self.every == 0 and step < trainer.cfg.steps:
            self._run(trainer, step)

    def on_fit_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        self._run(trainer, trainer.step)  # cfg.steps, or the step an early stop ended at
        summary["eval"] = {k[5:]: v for k, v in self.history[-1].items() if k.startswith("eval/")}

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state.get("history", [])]


class EarlyStopping(Callback):
    """Ends training when eval `metric` (a key of `evaluator`'s results) has not improved for `patience`
    evaluations in a row; improvement means higher for `mode="max"`, lower for `"min"`, by more than
    `min_delta`. The step it stops at is checkpointed (the stage exports it); `best` / `best_step` /
    `stopped_at` go into the summary. Its state is checkpointed, so a resumed run stops where an
    uninterrupted one would. Place it after its `EvalCallback` in the trainer's callbacks."""

    def __init__(self, evaluator: EvalCallback, metric: str, *, mode: str = "max", patience: int = 2,
                 min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"early stopping mode must be 'max' or 'min', got {mode!r}")
        self.evaluator, self.metric, self.mode = evaluator, metric, mode
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad = 0
        self.stopped_at: int | None = None
        self._seen = -1

    def _observe(self, trainer: "Trainer") -> None:
        if not self.evaluator.history or self.evaluator.history[-1]["step"] == self._seen:
            return
        record = self.evaluator.history[-1]
        self._seen = record["step"]
        key = f"eval/{self.metric}"
        if key not in record:
            known = sorted(k[5:] for k in record if k.startswith("eval/"))
            raise ConfigError(f"early_stop.metric '{self.metric}' is not an eval result; known: {known}")
        value = float(record[key])
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_step, self.bad = value, record["step"], 0
        else:
            self.bad += 1
        if self.bad >= self.patience and self.stopped_at is None and record["step"] < trainer.cfg.steps:
            self.stopped_at = record["step"]
        trainer.stop_requested = self.stopped_at is not None

    def on_fit_start(self, trainer: "Trainer") -> None:
        self._observe(trainer)  # the step-0 evaluation is the first point of comparison
        trainer.stop_requested = self.stopped_at is not None  # a resumed run that had stopped stays stopped

    def on_step_end(self, trainer: "Trainer", step: int, record: dict[str, Any]) -> None:
        self._observe(trainer)

    def on_fit_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        summary["early_stop"] = {"metric": self.metric, "best": self.best, "best_step": self.best_step,
                                 "stopped_at": self.stopped_at}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad, "stopped_at": self.stopped_at,
                "seen": self._seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")
        self.bad, self.stopped_at, self._seen = state.get("bad", 0), state.get("stopped_at"), state.get("seen", -1)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on embeddings or on 1-D parameters (norm weights), as in OLMo-core.

    PyTorch's fused AdamW kernel (one pass over parameter, gradient and both moments; 39 -> 11 ms per
    step for the tiny preset's 10.5 M parameters on our CPU) when every parameter is a plain tensor or
    lives on a GPU (FSDP2's DTensor shards included: the optimizer kernels of the 1B preset on an H100
    fell from ~50 ms per step with `foreach` to ~22 ms); sharded parameters on CPU (gloo) keep `foreach`.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    params = decay + no_decay
    fused = bool(params) and all(p.dtype.is_floating_point and (p.device.type == "cuda" or (
        type(p.data) is torch.Tensor and p.device.type == "cpu")) for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **({"fused": True} if fused else {"foreach": True}))


class Trainer:
    """Fits `model` with `objective` on batches from `loader` for `cfg.steps` optimizer steps.

    `loader` is any data source: an iterable of batches with `state_dict()` / `load_state_dict()` for
    exact resume, and optionally `split_rule` (`flowlm.train.batch.SplitRule`, how a batch splits into
    micro-batches; rows one by one when absent).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        loader: Any,
        cfg: EngineConfig,
        out_dir: Path,
        *,
        world: World | None = None,
        callbacks: Iterable[Callback] = (),
        write_config: Callable[[Path], None] = lambda _: None,
        flops_per_token: float | None = None,
        show_progress: bool = True,
        description: str = "train",
    ) -> None:
        self.model, self.objective, self.loader, self.cfg = model, objective, loader, cfg
        self.out_dir = Path(out_dir)
        self.world = world or World()
        self.callbacks = list(callbacks)
        self.write_config = write_config
        self.flops_per_token = flops_per_token
        self.show_progress, self.description = show_progress, description
        self.split_rule: SplitRule = getattr(loader, "split_rule", None) or SplitRule()
        self.objective.setup(model, self.world)
        self.optimizer = build_optimizer(model, cfg.optim)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.step = 0
        self.tokens_seen = 0
        self.stop_requested = False  # a callback (early stopping) ends `fit` after the current step
        self.nonfinite_in_a_row = 0  # skipped steps since the last applied one (checkpointed)
        # Gathered across attempts and kept in checkpoints: the stage summary survives a crash + resume.
        self.totals: dict[str, Any] = {"last_loss": None, "loop_seconds": 0.0, "loop_tokens": 0, "skipped_steps": 0}
        self.logger = MetricsLogger(self.out_dir, enabled=self.world.is_main, resume=True)
        self._peak = peak_flops(self.world.device, cfg.precision)
        if cfg.keep_freed_memory and self.world.device.type == "cpu":
            keep_freed_memory()

    # -- resume -------------------------------------------------------------------------------------
    def resume(self, path: Path | None = None) -> bool:
        """Load the newest complete checkpoint (or `path`); returns whether one was loaded."""
        if path is None:
            found = ckpt.list_checkpoints(self.ckpt_root)
            if not found:
                self.logger.truncate_after(-1)  # a fresh start: drop records of an interrupted attempt
                return False
            path = found[-1]
        msd, osd, tsd = ckpt.load_checkpoint(path)
        prefix = getattr(self.model, "checkpoint_prefix", "")
        ckpt.load_full_state(self.model, self.optimizer, {prefix + k: v for k, v in msd.items()}, osd)
        self.step, self.tokens_seen = int(tsd["step"]), int(tsd.get("tokens_seen", 0))
        self.nonfinite_in_a_row = int(tsd.get("nonfinite_in_a_row", 0))
        self.loader.load_state_dict(tsd["loader"])
        self.objective.load_state_dict(tsd.get("objective", {}))
        states = tsd.get("callbacks", [])
        for cb, state in zip(self.callbacks, states):
            cb.load_state_dict(state)
        self.totals.update(tsd.get("totals", {}))
        ckpt.set_rng_state(tsd["rng"])
        self.logger.truncate_after(self.step)
        return True

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (collective under FSDP2; rank 0 writes)."""
        msd, osd = ckpt.full_state(self.model, self.optimizer)
        prefix = getattr(self.model, "checkpoint_prefix", "")  # wrapped HF models: keep HF's own names
        msd = {k.removeprefix(prefix): v for k, v in msd.items()}
        path = None
        if self.world.is_main:
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "loader": self.loader.state_dict(),
                "rng": ckpt.rng_state(),
                "objective": self.objective.state_dict(),
                "callbacks": [cb.state_dict() for cb in self.callbacks],
                "totals": dict(self.totals),
            }
            path = ckpt.save_checkpoint(self.ckpt_root, self.step, msd, osd, state, self.write_config)
            ckpt.prune(self.ckpt_root, self.cfg.keep_last)
        barrier(self.world)
        return path

    # -- the loop -----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to `cfg.steps`, continuing from `self.step` (set by `resume`). Returns a summary.

        The summary (`final_loss`, `tok_s`, `mfu`, and what callbacks add) covers every attempt of the
        run: a resumed run reports what an uninterrupted one would (timings aside).
        """
        self.model.train()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        batches: Iterator[dict[str, Any]] = iter(self.loader)
        with make_progress(self.show_progress and self.world.is_main) as progress:
            task = progress.add_task(self.description, total=self.cfg.steps, completed=self.step, loss=math.nan, tps=0.0)
            mark = time.perf_counter()
            while self.step < self.cfg.steps and not self.stop_requested:
                t0 = time.perf_counter()
                record = self.train_step(next(batches))
                record["step_time"] = time.perf_counter() - t0
                record["tok_s"] = record["tokens"] / record["step_time"]
                if self.flops_per_token:
                    record["mfu"] = record["tok_s"] * self.flops_per_token / self._peak
                self.totals["last_loss"] = record["loss"]
                self.totals["loop_tokens"] += record["tokens"]
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    self.logger.log(record)
                progress.update(task, completed=self.step, loss=record["loss"], tps=record["tok_s"])
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                    now = time.perf_counter()
                    self.totals["loop_seconds"] += now - mark
                    mark = now
                    self.save()
                for cb in self.callbacks:
                    cb.on_step_end(self, self.step, record)
                if self.stop_requested and self.step % self.cfg.checkpoint_every and self.step != self.cfg.steps:
                    self.save()  # the stage exports the checkpoint of the step it stopped at
            self.totals["loop_seconds"] += time.perf_counter() - mark
        seconds, tokens = self.totals["loop_seconds"], self.totals["loop_tokens"]
        summary: dict[str, Any] = {
            "steps": self.step,
            "final_loss": self.totals["last_loss"],
            "tokens_seen": self.tokens_seen,
            "tok_s": tokens / seconds if seconds > 0 and tokens else None,
            "skipped_steps": self.totals["skipped_steps"],
        }
        if self.flops_per_token and summary["tok_s"]:
            summary["mfu"] = summary["tok_s"] * self.flops_per_token / self._peak
        for cb in self.callbacks:
            cb.on_fit_end(self, summary)
        self.logger.close()
        return summary

    def train_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One optimizer step over `batch` (this rank's rows), split into `grad_accum` micro-batches."""
        cfg, world, objective = self.cfg, self.world, self.objective
        lr = lr_at(self.step, cfg.steps, cfg.optim.lr, cfg.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = split_batch(batch, cfg.grad_accum, self.split_rule)
        n_global = all_reduce_sum(float(sum(objective.count_units(m) for m in micro)), world)
        # Gradients are averaged over ranks by FSDP2, hence x world size: the result is the gradient of
        # (sum of per-unit losses over the global batch) / (global unit count).
        scale = world.size / max(n_global, 1.0)
        parts: list[torch.Tensor] = []
        metrics = StepMetrics()
        for i, mb in enumerate(micro):
            mb = to_device(mb, world.device)
            with self._sync_context(last=i == len(micro) - 1), self._autocast():
                out = objective.loss(self.model, mb)
            (out.loss * scale).backward()
            parts.append(out.loss.detach().float())
            metrics.add(out.metrics)
        norm = self._clip()
        # The step's one wait for the device (loss, norm and the objective's metrics in one transfer),
        # placed before the optimizer step: on a GPU the host then prepares the next batch meanwhile.
        loss_sum, grad_norm = metrics.fetch([torch.stack(parts).sum(), norm.float().to(parts[0].device)])
        loss_sum = all_reduce_sum(loss_sum, world)  # every rank decides alike (the norm is global already)
        skipped = not (math.isfinite(loss_sum) and math.isfinite(grad_norm))
        empty = n_global == 0  # no loss unit anywhere: a zero gradient, and AdamW's moments would still move
        if skipped:
            self._skip_step(loss_sum, grad_norm)
        elif not empty:
            self.optimizer.step()
            self.nonfinite_in_a_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        # Throughput counts every computed position (as the peers' plain loops do); packing keeps padding low.
        tokens = int(all_reduce_sum(float(sum(objective.count_tokens(m) for m in micro)), world))
        self.step += 1
        self.tokens_seen += tokens
        record = {"step": self.step, "loss": loss_sum / max(n_global, 1.0), "lr": lr, "grad_norm": grad_norm,
                  "tokens": tokens, f"loss_{objective.unit}": int(n_global), "step_skipped": int(skipped),
                  "step_empty": int(empty)}
        record.update(metrics.reduce(world))
        if not skipped and not empty:
            objective.end_step(record)
        return record

    def _skip_step(self, loss_sum: float, grad_norm: float) -> None:
        """Count a non-finite step (its gradients are dropped by the caller); FlowError after
        `max_nonfinite_steps` in a row."""
        self.nonfinite_in_a_row += 1
        self.totals["skipped_steps"] += 1
        k, limit = self.nonfinite_in_a_row, self.cfg.max_nonfinite_steps
        if self.world.is_main:
            print(f"warning: step {self.step + 1}: non-finite loss/grad norm (loss sum {loss_sum}, grad norm "
                  f"{grad_norm}); step skipped ({k} in a row)", file=sys.stderr, flush=True)
        if k >= limit:
            raise FlowError(f"step {self.step + 1}: {k} non-finite steps in a row (max_nonfinite_steps {limit}); "
                            "stopping")

    def _clip(self) -> torch.Tensor:
        """Clip gradients to `cfg.clip` (0: no clipping); returns the total norm before clipping (a 0-d tensor)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.clip if self.cfg.clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
            norm = norm.full_tensor()
        return norm

    def _sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        # FSDP2: reduce-scatter gradients only on the last micro-batch of the accumulation group.
        if self.world.distributed and hasattr(self.model, "set_requires_gradient_sync"):
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.precision == "bf16" and not self.world.distributed:
            return torch.autocast(device_type=self.world.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
