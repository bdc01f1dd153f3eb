"""Procedurally generated math / reasoning tasks with verifiable answers and worked solutions.

Each generator takes a `random.Random` and returns one item `{id, task, prompt, answer, solution,
params}`: `answer` is the canonical final answer string; `solution` is a worked, step-by-step solution
ending in the task's answer format — `#### <n>` (GSM8K style) for word problems, `\\boxed{<ans>}` for the
others. `params` holds what `recompute()` needs to re-derive the answer independently of the worked
solution, so tests (and verifiers) can check every item.

Train / held-out split: an item is held out iff `is_heldout(prompt)` (a stable hash of the prompt text,
1 in 10), independent of the seed, so eval items can never appear in any training mix.

Near-duplicates cross the split, though: `9x + 15 = 33` can be a training item and `9x - 15 = -33` a
held-out one, and a word problem with another name and the factors swapped is the same computation.
Post-training data (`generate_clean`: the built-in SFT examples and the prompt rows of SFT, DPO and RL
stages) therefore also drops every training item that the post-training decontamination (OLMo 3's 8-gram,
0.5-overlap rule, `flowlm.data.decontam` mode `posttrain`) matches against the built-in eval suites' items
(`EVAL_REFERENCE`: the first 1,000 held-out items of all tasks and 300 of each task, seed 0), and tops the
set up from the stream so it keeps its size. About 2% of training items go, most of them letter counting
(its whole space is ~100 prompts). The pretraining corpus keeps `generate`: it is decontaminated by the
data pipeline.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import operator
import random
from typing import Any, Callable, Iterator

Item = dict[str, Any]
HELDOUT_MOD = 10

_NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mateo",
          "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tariq", "Uma", "Vik", "Wen", "Yara", "Zoe"]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "shells", "cards", "coins", "stamps"]
_WORDS = ["strawberry", "banana", "mississippi", "bookkeeper", "committee", "assessment", "parallel",
          "occurrence", "referee", "balloon", "tomorrow", "address", "coffee", "success", "letter", "pepper"]
_OPS: dict[str, Callable[[int, int], int]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def is_heldout(key: str) -> bool:
    """Stable (seed- and process-independent) 1-in-10 hold-out rule used by every built-in eval set."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % HELDOUT_MOD == 0


def _item(task: str, prompt: str, answer: Any, solution: str, params: dict[str, Any]) -> Item:
    digest = hashlib.sha1(prompt.encode()).hexdigest()[:12]
    return {"id": f"{task}-{digest}", "task": task, "prompt": prompt, "answer": str(answer),
            "solution": solution, "params": params}


def arithmetic(rng: random.Random) -> Item:
    """A multi-step integer expression, evaluated one operation at a time (left to right, * first)."""
    n_ops = rng.randint(2, 4)
    nums = [rng.randint(2, 30) for _ in range(n_ops + 1)]
    ops = [rng.choice("+-*") for _ in range(n_ops)]
    expr = " ".join(f"{n} {o}" for n, o in zip(nums, ops)) + f" {nums[-1]}"
    steps, vals, pending = [], list(nums), list(ops)
    for group in ("*", "+-"):  # precedence: all products first, then sums/differences left to right
        i = 0
        while i < len(pending):
            if pending[i] in group:
                a, b = vals[i], vals[i + 1]
                r = _OPS[pending[i]](a, b)
                steps.append(f"{a} {pending[i]} {b} = {r}")
                vals[i : i + 2], pending[i : i + 1] = [r], []
            else:
                i += 1
    ans = vals[0]
    body = "\n".join(f"Step {k + 1}: {s}" for k, s in enumerate(steps))
    solution = f"Multiplications first, then additions and subtractions from left to right.\n{body}\n" \
               f"The value is {ans}.\n\\boxed{{{ans}}}"
    return _item("arithmetic", f"Compute {expr}.", ans, solution, {"expr": expr})


def linear_equation(rng: random.Random) -> Item:
    """`a·x + b = c` with an integer solution."""
    a = rng.choice([k for k in range(-9, 10) if k not in (0, 1)])
    x, b = rng.randint(-20, 20), rng.randint(-50, 50)
    c = a * x + b
    sign = "+" if b >= 0 else "-"
    prompt = f"Solve for x: {a}x {sign} {abs(b)} = {c}."
    solution = (f"Subtract {b} from both sides: {a}x = {c} - ({b}) = {c - b}.\n"
                f"Divide both sides by {a}: x = {c - b} / {a} = {x}.\n"
                f"Check: {a} * {x} + ({b}) = {a * x + b}. Correct.\n\\boxed{{{x}}}")
    return _item("linear_equation", prompt, x, solution, {"a": a, "b": b, "c": c})


def word_problem(rng: random.Random) -> Item:
    """GSM8K-style multi-step story: start, buy boxes, give some away, share equally."""
    name, other, thing = rng.choice(_NAMES), rng.choice(_NAMES), rng.choice(_ITEMS)
    start, boxes, per_box = rng.randint(3, 40), rng.randint(2, 9), rng.randint(3, 12)
    total = start + boxes * per_box
    k = rng.randint(2, 6)
    left = k * rng.randint(1, (total - 1) // k)  # what remains divides evenly into the k bags
    gave, share = total - left, left // k
    prompt = (f"{name} has {start} {thing}. {name} buys {boxes} boxes with {per_box} {thing} in each box, "
              f"then gives {gave} {thing} to {other}. {name} splits the rest equally into {k} bags. "
              f"How many {thing} are in each bag?")
    bought = boxes * per_box
    solution = (f"{name} buys {boxes} * {per_box} = <<{boxes}*{per_box}={bought}>>{bought} {thing}.\n"
                f"Together that is {start} + {bought} = <<{start}+{bought}={total}>>{total} {thing}.\n"
                f"After giving {gave} away, {total} - {gave} = <<{total}-{gave}={left}>>{left} remain.\n"
                f"Each of the {k} bags gets {left} / {k} = <<{left}/{k}={share}>>{share} {thing}.\n#### {share}")
    params = {"start": start, "boxes": boxes, "per_box": per_box, "gave": gave, "bags": k}
    return _item("word_problem", prompt, share, solution, params)


def sorting(rng: random.Random) -> Item:
    """Sort a short list of integers ascending, by repeated selection of the minimum."""
    nums = [rng.randint(-99, 99) for _ in range(rng.randint(4, 8))]
    rest, picked, lines = list(nums), [], []
    while rest:
        m = min(rest)
        rest.remove(m)
        picked.append(m)
        lines.append(f"Smallest of the remaining numbers is {m}; sorted so far: {', '.join(map(str, picked))}.")
    ans = ", ".join(map(str, picked))
    prompt = f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}."
    return _item("sorting", prompt, ans, "\n".join(lines) + f"\n\\boxed{{{ans}}}", {"nums": nums})


def counting(rng: random.Random) -> Item:
    """Count letters in a word (spelled out letter by letter) or the even numbers in a list."""
    if rng.random() < 0.3:
        word = rng.choice(_WORDS)
        letter = rng.choice(sorted(set(word)))
        hits, lines = 0, []
        for i, ch in enumerate(word):
            hits += ch == letter
            lines.append(f"{i + 1}. {ch}" + (f" <- match ({hits})" if ch == letter else ""))
        prompt = f"How many times does the letter '{letter}' appear in the word '{word}'?"
        solution = f"Spell out '{word}':\n" + "\n".join(lines) + f"\nThe letter '{letter}' appears {hits} times."
        return _item("counting", prompt, hits, solution + f"\n\\boxed{{{hits}}}", {"word": word, "letter": letter})
    nums = [rng.randint(1, 99) for _ in range(rng.randint(5, 10))]
    hits, lines = 0, []
    for v in nums:
        hits += v % 2 == 0
        lines.append(f"{v} is {'even' if v % 2 == 0 else 'odd'}; count = {hits}.")
    prompt = f"How many of these numbers are even: {', '.join(map(str, nums))}?"
    solution = "\n".join(lines) + f"\nThere are {hits} even numbers.\n\\boxed{{{hits}}}"
    return _item("counting", prompt, hits, solution, {"nums": nums})


GENERATORS: dict[str, Callable[[random.Random], Item]] = {
    "arithmetic": arithmetic, "linear_equation": linear_equation, "word_problem": word_problem,
    "sorting": sorting, "counting": counting,
}


def _safe_eval(expr: str) -> int:
    """Evaluate an integer +,-,* expression via the AST (never `eval`)."""
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult):
            f = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}[type(node.op)]
            return f(ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(f"unsupported expression node {type(node).__name__}")
    return ev(ast.parse(expr, mode="eval").body)


def recompute(item: Item) -> str:
    """Re-derive an item's answer from its `params` (independently of the generator's worked steps)."""
    p, task = item["params"], item["task"]
    if task == "arithmetic":
        return str(_safe_eval(p["expr"]))
    if task == "linear_equation":
        return str((p["c"] - p["b"]) // p["a"])
    if task == "word_problem":
        return str((p["start"] + p["boxes"] * p["per_box"] - p["gave"]) // p["bags"])
    if task == "sorting":
        return ", ".join(map(str, sorted(p["nums"])))
    if task == "counting" and "word" in p:
        return str(p["word"].count(p["letter"]))
    if task == "counting":
        return str(sum(1 for v in p["nums"] if not v & 1))
    raise ValueError(f"unknown task {task!r}")


def generate(seed: int, n: int, *, split: str = "train", tasks: tuple[str, ...] | None = None) -> list[Item]:
    """`n` distinct items (round-robin over `tasks`) from the `train` or `heldout` side of the split."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    names = tasks or tuple(GENERATORS)
    out: list[Item] = []
    for item in _stream(seed, names):
        if is_heldout(item["prompt"]) == (split == "heldout"):
            out.append(item)
            if len(out) == n:
                break
    return out


EVAL_REFERENCE = 1000, 300
"""Held-out items (seed 0) the built-in eval suites draw from: the first N of all tasks, and of each task."""


@functools.lru_cache(maxsize=1)
def _eval_index() -> Any:
    """The post-training decontamination index over the built-in eval suites' items (question + solution)."""
    from flowlm.data.decontam import DecontamCfg, Decontaminator

    n_all, n_task = EVAL_REFERENCE
    items = {it["id"]: it for it in generate(0, n_all, split="heldout")}
    for name in GENERATORS:
        items.update((it["id"], it) for it in generate(0, n_task, split="heldout", tasks=(name,)))
    bench = [{"benchmark": "builtin", "item_id": i, "question": it["prompt"], "answer": it["solution"]}
             for i, it in items.items()]
    return Decontaminator(bench, DecontamCfg(mode="posttrain"))


def near_heldout(item: Item) -> bool:
    """Whether a training item (prompt and worked solution) is a near-duplicate of a built-in eval item."""
    return _near(item["id"], f"{item['prompt']}\n{item['solution']}")


@functools.lru_cache(maxsize=1 << 16)
def _near(item_id: str, text: str) -> bool:
    return bool(_eval_index().scan({"id": item_id, "text": text}))


def generate_clean(seed: int, n: int, *, tasks: tuple[str, ...] | None = None) -> list[Item]:
    """`generate(seed, n, split="train", tasks=tasks)` without the near-duplicates of built-in eval items
    (`near_heldout`), topped up from the same stream: the first `n` clean training items."""
    want = n
    while True:
        drawn = generate(seed, want, split="train", tasks=tasks)
        clean = [it for it in drawn if not near_heldout(it)]
        if len(clean) >= n or len(drawn) < want:  # enough, or the stream ran out
            return clean[:n]
        want += (n - len(clean)) * 2 + 8


def _stream(seed: int, names: tuple[str, ...]) -> Iterator[Item]:
    """Distinct items, round-robin over tasks; a task whose prompts run out (counting) is dropped."""
    rng, seen = random.Random(seed), set()
    live = list(names)
    dups = {name: 0 for name in names}
    i = 0
    while live:
        name = live[i % len(live)]
        i += 1
        item = GENERATORS[name](rng)
        if item["prompt"] in seen:
            dups[name] += 1
            if dups[name] >= 200:  # 200 duplicates in a row: this generator is exhausted
                live.remove(name)
            continue
        dups[name] = 0
        seen.add(item["prompt"])
        yield item


def as_text(item: Item) -> str:
    """A training document: question, then the worked solution."""
    return f"Question: {item['prompt']}\nAnswer: {item['solution']}"
