"""Generated math / reasoning tasks: answers re-derived independently, answer formats, split, determinism."""

from __future__ import annotations

import random
import re

import pytest

from flowlm.data import tasks


@pytest.fixture(scope="module")
def items() -> list[tasks.Item]:
    return tasks.generate(0, 1000) + tasks.generate(0, 200, split="heldout")


def test_every_answer_recomputes(items: list[tasks.Item]) -> None:
    assert {it["task"] for it in items} == set(tasks.GENERATORS)
    for it in items:
        assert tasks.recompute(it) == it["answer"], it["prompt"]


def test_solution_ends_with_the_answer_in_task_format(items: list[tasks.Item]) -> None:
    for it in items:
        last = it["solution"].rstrip().splitlines()[-1]
        if it["task"] == "word_problem":
            assert last == f"#### {it['answer']}"
        else:
            assert last == f"\\boxed{{{it['answer']}}}"


def test_arithmetic_prompt_evaluates_to_answer(items: list[tasks.Item]) -> None:
    # Independent of `params`: parse the expression back out of the prompt text.
    for it in (i for i in items if i["task"] == "arithmetic"):
        expr = re.fullmatch(r"Compute (.*)\.", it["prompt"]).group(1)
        assert str(tasks._safe_eval(expr)) == it["answer"]
        assert int(it["answer"]) == eval(expr, {"__builtins__": {}})  # noqa: S307 - digits and + - * only


def test_linear_equation_solution_satisfies_equation(items: list[tasks.Item]) -> None:
    for it in (i for i in items if i["task"] == "linear_equation"):
        a, sign, b, c = re.fullmatch(r"Solve for x: (-?\d+)x ([+-]) (\d+) = (-?\d+)\.", it["prompt"]).groups()
        x = int(it["answer"])
        assert int(a) * x + (int(b) if sign == "+" else -int(b)) == int(c)


_PERTURB = {
    "arithmetic": lambda p: {**p, "expr": p["expr"] + " + 1"},
    "linear_equation": lambda p: {**p, "c": p["c"] + p["a"]},  # solution x + 1
    "word_problem": lambda p: {**p, "gave": p["gave"] - p["bags"]},  # one more per bag
    "sorting": lambda p: {**p, "nums": p["nums"] + [-1000]},
    "counting": lambda p: {**p, "nums": p["nums"] + [2]} if "nums" in p else {**p, "word": p["word"] + p["letter"]},
}


def test_recompute_catches_a_wrong_answer(items: list[tasks.Item]) -> None:
    for task, perturb in _PERTURB.items():
        for it in [i for i in items if i["task"] == task][:20]:
            assert tasks.recompute(dict(it, params=perturb(it["params"]))) != it["answer"]
    with pytest.raises(ValueError):
        tasks.recompute(dict(items[0], task="nope"))


def test_deterministic_distinct_and_split(items: list[tasks.Item]) -> None:
    assert tasks.generate(0, 50) == tasks.generate(0, 50)
    assert tasks.generate(0, 50) != tasks.generate(1, 50)
    train = tasks.generate(0, 1000)
    assert len({it["prompt"] for it in train}) == 1000
    assert not any(tasks.is_heldout(it["prompt"]) for it in train)
    held = tasks.generate(0, 200, split="heldout")
    assert all(tasks.is_heldout(it["prompt"]) for it in held)
    assert not {it["prompt"] for it in held} & {it["prompt"] for it in tasks.generate(3, 3000)}


def test_heldout_rule_is_one_in_ten() -> None:
    rng = random.Random(0)
    frac = sum(tasks.is_heldout(str(rng.random())) for _ in range(20_000)) / 20_000
    assert 0.08 < frac < 0.12


def test_generate_only_requested_tasks() -> None:
    out = tasks.generate(0, 30, tasks=("sorting",))
    assert {it["task"] for it in out} == {"sorting"}
    for it in out:
        nums = [int(v) for v in re.findall(r"-?\d+", it["prompt"])]
        assert it["answer"] == ", ".join(map(str, sorted(nums)))


def test_generate_clean_drops_near_duplicates_of_eval_items_and_keeps_its_size() -> None:
    """Raw training items include near-duplicates of built-in eval items (`9x + 15 = 33` beside a held-out
    `9x - 15 = -33`); `generate_clean` drops every one the post-training decontamination finds, tops up to
    `n`, and is a prefix-stable, deterministic stream like `generate`."""
    from flowlm.data.decontam import DecontamCfg, Decontaminator
    from flowlm.eval.suites import builtin_suite

    raw = tasks.generate(5, 1500)
    clean = tasks.generate_clean(5, 1500)
    assert len(clean) == 1500 and not any(tasks.near_heldout(it) or tasks.is_heldout(it["prompt"]) for it in clean)
    dropped = [it for it in raw if tasks.near_heldout(it)]
    assert 0 < len(dropped) < 0.05 * len(raw)  # about 2%: mostly letter counting
    assert [it["id"] for it in raw if not tasks.near_heldout(it)] == [it["id"] for it in clean][:len(raw) - len(dropped)]
    assert tasks.generate_clean(5, 700) == clean[:700] and tasks.generate_clean(5, 1500) == clean
    assert all(it["task"] == "counting" for it in tasks.generate_clean(5, 50, tasks=("counting",)))
    # an index of the 200-item built-in suite alone (what `flowlm eval --suite builtin` scores): raw items hit
    # it, clean ones do not
    suite = builtin_suite("builtin", n=200)
    index = Decontaminator([{"benchmark": "b", "item_id": it.id, "question": it.question, "answer": it.demo}
                            for it in suite.items], DecontamCfg(mode="posttrain"))
    def hits(items: list[tasks.Item]) -> int:
        return sum(bool(index.scan({"id": it["id"], "text": f"{it['prompt']}\n{it['solution']}"})) for it in items)
    assert hits(raw) > 0 and hits(clean) == 0
