"""The objective contract: registry and typed configs, batch splitting rules, typed metric aggregation."""

from __future__ import annotations

import math

import pytest
import torch

from flowlm.errors import ConfigError
from flowlm.train.aggregate import StepMetrics
from flowlm.train.batch import SplitRule, split_batch
from flowlm.train.objectives import (
    LossOutput,
    Max,
    Mean,
    Objective,
    ObjectiveConfig,
    Sum,
    build_objective,
    objective_names,
    parse_objective_config,
    register_objective,
)
from flowlm.train.objectives.lm import LMConfig, LMObjective


def test_objectives_are_built_by_name_with_their_own_typed_config():
    obj = build_objective({"name": "lm", "z_loss": 1e-5})
    assert isinstance(obj, LMObjective) and obj.cfg == LMConfig(z_loss=1e-5) and obj.unit == "tokens"
    assert build_objective("lm").cfg.z_loss == 0.0
    assert LMObjective(z_loss=2e-5).cfg.z_loss == 2e-5
    assert "lm" in objective_names()
    with pytest.raises(ValueError, match="unknown objective 'lmm' \\(did you mean 'lm'\\?\\)"):
        parse_objective_config({"name": "lmm"})
    with pytest.raises(ValueError, match="z_loss"):
        parse_objective_config({"name": "lm", "z_loss": -1})


def test_registering_needs_a_matching_config_name():
    class BadConfig(ObjectiveConfig):
        name: str = "other"

    class Bad(Objective):
        name = "bad_toy"
        Config = BadConfig

    with pytest.raises(ValueError, match="must default to 'bad_toy'"):
        register_objective(Bad)


def test_split_keeps_groups_whole_and_copies_shared_values():
    batch = {"x": torch.arange(12).reshape(6, 2), "ids": list("abcdef"), "scale": 3.0}
    rule = SplitRule(group=3, shared=frozenset({"scale"}))
    parts = split_batch(batch, 2, rule)
    assert [p["ids"] for p in parts] == [list("abc"), list("def")]
    assert torch.equal(torch.cat([p["x"] for p in parts]), batch["x"]) and all(p["scale"] == 3.0 for p in parts)
    with pytest.raises(ConfigError, match="groups of 3 does not split into 4"):
        split_batch(batch, 4, rule)
    with pytest.raises(ConfigError, match="disagree on the number of rows"):
        split_batch({"x": torch.zeros(4, 1), "y": torch.zeros(3, 1)}, 1)
    assert split_batch(batch, 1, rule)[0] == batch


def test_metrics_aggregate_by_kind_across_micro_batches():
    m = StepMetrics()
    # micro-batch 1: 2 pairs, 1 right; micro-batch 2: 3 pairs, 3 right
    m.add({"pairs": Sum(2), "accuracy": Mean(torch.tensor(1.0), 2), "max_margin": Max(torch.tensor(0.5))})
    m.add({"pairs": Sum(3), "accuracy": Mean(torch.tensor(3.0), 3), "max_margin": Max(torch.tensor(2.5))})
    loss, norm = m.fetch([torch.tensor(7.0), torch.tensor(1.5)])
    assert (loss, norm) == (7.0, 1.5)
    out = m.reduce(world=None)
    assert out == {"pairs": 5.0, "accuracy": pytest.approx(4 / 5), "max_margin": 2.5}


def test_metric_kind_must_not_change_within_a_step_and_empty_means_are_nan():
    m = StepMetrics()
    m.add({"a": Sum(1)})
    with pytest.raises(TypeError, match="changed kind"):
        m.add({"a": Max(1)})
    m = StepMetrics()
    m.add({"acc": Mean(0.0, 0)})
    assert math.isnan(m.reduce(world=None)["acc"])


def test_lm_objective_counts_labelled_tokens_and_reports_z_loss_as_a_mean():
    torch.manual_seed(0)
    from flowlm.model.config import ModelConfig
    from flowlm.model.olmo3 import Olmo3

    model = Olmo3(ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                              intermediate_size=64, max_seq_len=16, sliding_window=8))
    batch = {"input_ids": torch.randint(0, 64, (2, 8)), "labels": torch.randint(0, 64, (2, 8))}
    batch["labels"][0, :3] = -100
    obj = LMObjective(z_loss=1e-3)
    assert obj.count_units(batch) == 13 and obj.count_tokens(batch) == 16
    out = obj.loss(model, batch)
    assert isinstance(out, LossOutput) and out.loss.ndim == 0
    z = out.metrics["z_loss"]
    assert isinstance(z, Mean) and z.count == 13 and float(z.total) > 0
