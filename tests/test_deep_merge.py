"""`flowlm.config.deep_merge`: dicts merge recursively, every other value from `over` replaces."""

from flowlm.config import deep_merge


def test_nested_dicts_merge_and_other_values_replace():
    base = {"a": 1, "opt": {"lr": 0.1, "betas": [0.9, 0.95], "sched": {"warmup": 10, "kind": "cos"}}, "keep": "x"}
    over = {"a": 2, "opt": {"lr": 0.01, "sched": {"warmup": 0}}, "new": {"k": 1}}
    assert deep_merge(base, over) == {
        "a": 2, "opt": {"lr": 0.01, "betas": [0.9, 0.95], "sched": {"warmup": 0, "kind": "cos"}},
        "keep": "x", "new": {"k": 1}}


def test_none_lists_and_type_changes_replace():
    base = {"a": {"x": 1}, "b": [1, 2], "c": 3, "d": {"y": 1}}
    over = {"a": None, "b": [3], "c": {"z": 1}, "d": {}}
    # None and a list replace; a dict over a scalar replaces it; an empty dict over a dict changes nothing
    assert deep_merge(base, over) == {"a": None, "b": [3], "c": {"z": 1}, "d": {"y": 1}}


def test_inputs_are_unchanged_and_not_shared():
    base = {"s": {"x": [1]}, "t": {"u": 1}}
    over = {"s": {"y": {"z": 2}}}
    out = deep_merge(base, over)
    out["s"]["x"].append(9)
    out["s"]["y"]["z"] = 7
    out["t"]["u"] = 5
    assert base == {"s": {"x": [1]}, "t": {"u": 1}}
    assert over == {"s": {"y": {"z": 2}}}
