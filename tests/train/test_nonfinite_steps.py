"""The engine skips a whole step whose loss or gradient norm is not finite: parameters and AdamW state
untouched, one warning line, `step_skipped` in the record, the step still counted; `max_nonfinite_steps`
in a row stop the run with a FlowError, and the count survives a checkpoint and resume. A step with no
loss unit at all (RL: every group filtered) applies no update either (`step_empty`).

A toy objective (least squares on a linear model) turns its loss NaN on the rows the loader marks `bad`,
or its gradient NaN with a finite loss on rows marked `bad_grad`, so a chosen micro-batch of a chosen
step goes wrong."""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any, Literal

import pytest
import torch
from torch import nn

from flowlm.errors import FlowError
from flowlm.train.config import EngineConfig
from flowlm.train.engine import Callback, Trainer
from flowlm.train.objectives import LossOutput, Mean, Objective, ObjectiveConfig

ROWS = 4


class ToyConfig(ObjectiveConfig):
    name: Literal["nonfinite_toy"] = "nonfinite_toy"


class Toy(Objective):
    """Σ (model(x) - y)²; NaN where the loader marked the batch; records the steps `end_step` saw."""

    name = "nonfinite_toy"
    Config = ToyConfig

    def __init__(self) -> None:
        super().__init__()
        self.ended: list[int] = []

    def count_units(self, batch: dict[str, Any]) -> int:
        return int(batch["keep"].sum())

    def count_tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["x"].shape[0])

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> LossOutput:
        loss = ((model(batch["x"]) - batch["y"]).square() * batch["keep"][:, None]).sum()
        if batch["bad"].any():
            loss = loss * float("nan")
        if batch["bad_grad"].any():  # d sqrt(u)/du at 0 is inf: times 0 gives a finite loss, a NaN gradient
            loss = loss + 0.0 * torch.sqrt(model.weight - model.weight.detach()).sum()
        return LossOutput(loss, {"mse": Mean(loss.detach(), batch["x"].shape[0])})

    def end_step(self, metrics: dict[str, float]) -> None:
        self.ended.append(int(metrics["step"]))


class Loader:
    """Seeded batches of 4 rows; `bad[step]` / `bad_grad[step]` (1-based) name the rows to spoil."""

    def __init__(self, bad: dict[int, list[int]] | None = None, bad_grad: dict[int, list[int]] | None = None,
                 empty: tuple[int, ...] = ()):
        self.bad, self.bad_grad, self.empty, self.pos = bad or {}, bad_grad or {}, empty, 0

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.pos)
            x, y = torch.randn(ROWS, 3, generator=g), torch.randn(ROWS, 1, generator=g)
            self.pos += 1
            keep = torch.full((ROWS,), self.pos not in self.empty)  # an empty step: no row counts
            yield {"x": x, "y": y, "bad": self._flags(self.bad), "bad_grad": self._flags(self.bad_grad), "keep": keep}

    def _flags(self, table: dict[int, list[int]]) -> torch.Tensor:
        flags = torch.zeros(ROWS, dtype=torch.bool)
        flags[table.get(self.pos, [])] = True
        return flags

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pos = int(state["pos"])


class Crash(Exception):
    pass


class CrashAfter(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, step: int, record: dict[str, Any]) -> None:
        if step == self.step:
            raise Crash


def trainer(out, loader: Loader, *, steps: int = 6, grad_accum: int = 2, max_nonfinite_steps: int = 3,
            callbacks=()) -> Trainer:
    torch.manual_seed(0)
    cfg = EngineConfig(steps=steps, seq_len=2, batch_size=ROWS, grad_accum=grad_accum, optim={"lr": 0.1},
                       schedule={"kind": "constant"}, checkpoint_every=1, keep_last=10,
                       max_nonfinite_steps=max_nonfinite_steps)
    return Trainer(nn.Linear(3, 1), Toy(), loader, cfg, out, show_progress=False, callbacks=callbacks)


def records(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


@pytest.mark.parametrize("spoil", ["bad", "bad_grad"])
def test_a_step_with_one_non_finite_micro_batch_is_skipped_whole(tmp_path, capsys, spoil):
    # step 2: only the second micro-batch (rows 2-3) goes wrong; the first one's gradient is not applied
    loader = Loader(**{spoil: {2: [3]}})
    t = trainer(tmp_path, loader)
    batches = iter(loader)
    first = t.train_step(next(batches))
    assert first["step_skipped"] == 0 and t.nonfinite_in_a_row == 0
    params = copy.deepcopy(t.model.state_dict())
    optim = copy.deepcopy(t.optimizer.state_dict())
    rec = t.train_step(next(batches))
    assert rec["step_skipped"] == 1 and rec["step"] == 2 and t.step == 2  # the step is counted
    assert not math.isfinite(rec["loss" if spoil == "bad" else "grad_norm"])
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, params[k]), k  # no update, bitwise
    after = t.optimizer.state_dict()
    for i, st in optim["state"].items():  # AdamW's moments and step count untouched
        for k, v in st.items():
            assert torch.equal(after["state"][i][k], v), (i, k)
    assert all(p.grad is None for p in t.model.parameters())  # the spoiled gradients are dropped
    err = capsys.readouterr().err
    assert re.search(r"^warning: step 2: non-finite loss/grad norm \(loss sum \S+, grad norm \S+\); step skipped "
                     r"\(1 in a row\)$", err, re.M), err
    third = t.train_step(next(batches))
    assert third["step_skipped"] == 0 and t.nonfinite_in_a_row == 0
    assert not torch.equal(t.model.weight, params["weight"])  # applied again
    assert t.objective.ended == [1, 3]  # the objective's step-end hook sees applied steps only


def test_k_non_finite_steps_in_a_row_stop_the_run(tmp_path, capsys):
    t = trainer(tmp_path / "a", Loader(bad={2: [0], 3: [1, 2]}), max_nonfinite_steps=2)
    with pytest.raises(FlowError, match=r"^step 3: 2 non-finite steps in a row \(max_nonfinite_steps 2\); stopping$"):
        t.fit()
    assert "step skipped (2 in a row)" in capsys.readouterr().err
    # not in a row: skipped, counted, the run goes on
    t = trainer(tmp_path / "b", Loader(bad={2: [0], 4: [3]}), max_nonfinite_steps=2)
    summary = t.fit()
    assert summary["steps"] == 6 and summary["skipped_steps"] == 2
    assert [r["step_skipped"] for r in records(tmp_path / "b")] == [0, 1, 0, 1, 0, 0]


def test_the_count_in_a_row_survives_a_resume(tmp_path):
    out = tmp_path / "run"
    loader = Loader(bad={2: [0], 3: [0]})
    with pytest.raises(Crash):  # crash after step 2's checkpoint: one skipped step in a row so far
        trainer(out, loader, max_nonfinite_steps=2, callbacks=[CrashAfter(2)]).fit()
    again = trainer(out, Loader(bad={2: [0], 3: [0]}), max_nonfinite_steps=2)
    assert again.resume() and again.step == 2 and again.nonfinite_in_a_row == 1
    with pytest.raises(FlowError, match="2 non-finite steps in a row"):
        again.fit()
    # and a straight run without faults equals a resumed one after a skipped step (the step counted alike)
    straight = trainer(tmp_path / "s", Loader(bad={2: [0]}))
    straight.fit()
    with pytest.raises(Crash):
        trainer(tmp_path / "r", Loader(bad={2: [0]}), callbacks=[CrashAfter(2)]).fit()
    resumed = trainer(tmp_path / "r", Loader(bad={2: [0]}))
    assert resumed.resume()
    resumed.fit()
    clean = [{k: v for k, v in r.items() if k not in ("step_time", "tok_s")} for r in records(tmp_path / "s")]
    again_ = [{k: v for k, v in r.items() if k not in ("step_time", "tok_s")} for r in records(tmp_path / "r")]
    assert json.dumps(clean) == json.dumps(again_)  # NaN included


def test_a_step_without_loss_units_applies_no_update(tmp_path, capsys):
    """Step 2's global batch has no loss unit: its gradient is zero, yet AdamW's step would still move the
    weights along the moments of step 1 (by about a step's size); the engine leaves weights and moments as
    they were, counts the step, and says so in `step_empty`."""
    loader = Loader(empty=(2,))
    t = trainer(tmp_path, loader)
    batches = iter(loader)
    assert t.train_step(next(batches))["step_empty"] == 0
    params = copy.deepcopy(t.model.state_dict())
    optim = copy.deepcopy(t.optimizer.state_dict())
    rec = t.train_step(next(batches))
    assert rec["step_empty"] == 1 and rec["step_skipped"] == 0 and rec["loss_tokens"] == 0 and t.step == 2
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, params[k]), k
    after = t.optimizer.state_dict()
    for i, st in optim["state"].items():
        for k, v in st.items():
            assert torch.equal(after["state"][i][k], v), (i, k)
    assert "warning" not in capsys.readouterr().err and t.nonfinite_in_a_row == 0
    third = t.train_step(next(batches))
    assert third["step_empty"] == 0 and not torch.equal(t.model.weight, params["weight"])
    assert t.objective.ended == [1, 3]


def test_metrics_jsonl_is_strict_json_with_null_for_non_finite_values(tmp_path):
    """`NaN` is not JSON (jq and JavaScript reject it): a non-finite value, at any depth, is written as null;
    finite values are written as they are."""
    from flowlm.train.metrics import MetricsLogger

    log = MetricsLogger(tmp_path, enabled=True)
    log.log({"step": 1, "loss": float("nan"), "entropy": 0.5, "nested": {"a": float("inf"), "b": [1.0, float("-inf")]},
             "name": "x"})
    log.close()

    def refuse(constant: str):
        raise AssertionError(f"non-JSON constant {constant} in metrics.jsonl")

    line = (tmp_path / "metrics.jsonl").read_text().splitlines()[0]
    assert json.loads(line, parse_constant=refuse) == {"step": 1, "loss": None, "entropy": 0.5,
                                                       "nested": {"a": None, "b": [1.0, None]}, "name": "x"}
