"""Built-in corpora that exist on every machine with no download: the Python standard library + generated math.

Sources: the `.py` files under `sysconfig.get_paths()["stdlib"]` in sorted path order, skipping tests,
site-packages, generated tables (`encodings/`, `pydoc_data/`, `_sysconfigdata*`) and files > 240 KB
(≈ 10 MB, 580 modules on CPython 3.11), plus the procedurally generated tasks of `flowlm.data.tasks`.
Docstrings are found with regular expressions, not `ast`: parsing the whole stdlib takes ~8 s on two
busy cores, the regexes take ~0.1 s, and the stdlib's formatting is regular enough for them.

Train / held-out split (seed-independent, so no seed's training mix can contain another seed's eval
items): a module is held out iff `tasks.is_heldout(<path relative to stdlib>)`; a task item iff
`tasks.is_heldout(<prompt>)`. Training mixes use only training modules and items; eval sets use only
held-out ones, and additionally drop any item whose text also occurs as a docstring of a training
module (the stdlib repeats some docstrings across modules). The SFT examples (`sft_examples`) also skip
training items that are near-duplicates of built-in eval items (`tasks.generate_clean`).
"""

from __future__ import annotations

import functools
import inspect
import os
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from flowlm.data import tasks
from flowlm.errors import FlowError

Doc = dict[str, Any]
_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__", "encodings", "pydoc_data",
              "lib-dynload", "ensurepip"}
_MAX_FILE_BYTES = 240_000
_Q = r"[rRuU]?(?P<q>\"\"\"|''')"  # opening triple quote of a docstring; `(?P=q)` closes it
_DOC = _Q + r"(?P<doc>.*?)(?P=q)"
# `def name(args) -> ann:` + docstring. The argument list allows one level of nested parentheses and
# nothing else, so a function without a docstring can never make the match run into the next def.
_FUNC_DOC = re.compile(
    r"^(?P<indent>[ \t]*)(?:async[ \t]+)?def[ \t]+(?P<name>\w+)[ \t]*\((?P<args>(?:[^()]|\([^()]*\))*)\)"
    r"[ \t]*(?:->[^:\n]+)?:[ \t]*\n[ \t]+" + _DOC, re.M | re.S)
_CLASS_DOC = re.compile(r"^[ \t]*class[ \t]+(?P<name>\w+)[^\n]*:[ \t]*\n[ \t]+" + _DOC, re.M | re.S)
_MODULE_DOC = re.compile(r"\A(?:[ \t]*(?:#[^\n]*)?\n)*" + _DOC, re.S)


@dataclass(frozen=True)
class Module:
    """One stdlib source file: `rel` path (the split key), dotted `name`, source `text`."""

    rel: str
    name: str
    text: str

    @property
    def heldout(self) -> bool:
        return tasks.is_heldout(self.rel)


@functools.lru_cache(maxsize=2)
def stdlib_modules(root: str | None = None) -> tuple[Module, ...]:
    """All usable stdlib modules in sorted path order (cached per process)."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        raise FlowError(f"{base}: Python standard library sources not found (needed for built-in data)")
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-"))
        for fn in sorted(filenames):
            path = Path(dirpath) / fn
            if not fn.endswith(".py") or fn.startswith("_sysconfigdata") or path.stat().st_size > _MAX_FILE_BYTES:
                continue
            rel = path.relative_to(base).as_posix()
            name = rel[:-3].replace("/", ".").removesuffix(".__init__")
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                out.append(Module(rel, name, text))
    return tuple(sorted(out, key=lambda m: m.rel))


def _clean(doc: str) -> str:
    return inspect.cleandoc(doc).strip()


@functools.lru_cache(maxsize=None)
def function_docs(mod: Module) -> tuple[tuple[str, str, str, int], ...]:
    """`(name, signature line, cleaned docstring, line number)` for every documented function in a module."""
    out = []
    for m in _FUNC_DOC.finditer(mod.text):
        args = " ".join(m.group("args").split())
        doc = _clean(m.group("doc"))
        if doc:
            line = mod.text.count("\n", 0, m.start()) + 1
            out.append((m.group("name"), f"def {m.group('name')}({args}):", doc, line))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def module_docstrings(mod: Module) -> tuple[str, ...]:
    """Module, class and function docstrings of a module, in source order (module docstring first)."""
    found = []
    head = _MODULE_DOC.match(mod.text)
    if head:
        found.append((head.start("doc"), _clean(head.group("doc"))))
    for rx in (_CLASS_DOC, _FUNC_DOC):
        found += [(m.start("doc"), _clean(m.group("doc"))) for m in rx.finditer(mod.text)]
    return tuple(d for _, d in sorted(set(found)) if d)


def _docstring_doc(mod: Module) -> Doc | None:
    docs = module_docstrings(mod)
    if not docs:
        return None
    text = f"Documentation of the Python module `{mod.name}`.\n\n" + "\n\n".join(docs) + "\n"
    return _doc(f"stdlib-doc:{mod.rel}", text, "stdlib-docstrings", module=mod.name)


def _code_doc(mod: Module) -> Doc:
    return _doc(f"stdlib-code:{mod.rel}", f"# File: Lib/{mod.rel}\n{mod.text}", "stdlib-code", module=mod.name)


def _doc(id_: str, text: str, source: str, **meta: Any) -> Doc:
    return {"id": id_, "text": text, "source": source, "metadata": meta}


def _math_doc(item: tasks.Item) -> Doc:
    return _doc(f"math:{item['id']}", tasks.as_text(item), "math", task=item["task"])


def _fill(pools: list[tuple[float, list[Doc]]], max_bytes: int, seed: int) -> list[Doc]:
    """Take docs from each pool (shuffled by `seed`) until its share of `max_bytes`; interleave by seed."""
    rng = random.Random(seed)
    out: list[Doc] = []
    for share, pool in pools:
        pool = list(pool)
        rng.shuffle(pool)
        budget = share * max_bytes
        for d in pool:
            if budget <= 0:
                break
            out.append(d)
            budget -= len(d["text"].encode())
    rng.shuffle(out)
    return out


def _train_modules() -> list[Module]:
    return [m for m in stdlib_modules() if not m.heldout]


def _heldout_modules() -> list[Module]:
    return [m for m in stdlib_modules() if m.heldout]


# -- training mixes --------------------------------------------------------------------------------
def pretrain_docs(seed: int, max_bytes: int = 4_000_000) -> list[Doc]:
    """Pretraining mix ≈ 50% stdlib code, 35% stdlib docstrings (prose), 15% worked math solutions."""
    mods = _train_modules()
    code = [_code_doc(m) for m in mods]
    prose = [d for d in map(_docstring_doc, mods) if d is not None]
    math = [_math_doc(it) for it in tasks.generate(seed, _n_math(0.15 * max_bytes))]
    return _fill([(0.5, code), (0.35, prose), (0.15, math)], max_bytes, seed)


def midtrain_docs(seed: int, max_bytes: int = 2_000_000) -> list[Doc]:
    """Midtraining mix ≈ 40% worked math, 25% instruction-style Q/A, 35% code (a different seed stream)."""
    mods = _train_modules()
    # A different generator stream from pretraining (seed + 1_000_003): mostly new problems.
    items = tasks.generate(seed + 1_000_003, _n_math(0.5 * max_bytes))
    math = [_math_doc(it) for it in items[: len(items) * 4 // 5]]
    qa = [_qa_doc(it) for it in items[len(items) * 4 // 5 :]]
    qa += [_api_qa_doc(m, name, sig, doc, line) for m in mods for name, sig, doc, line in function_docs(m)
           if not name.startswith("_") and len(doc) > 40]
    code = [_code_doc(m) for m in mods]
    return _fill([(0.4, math), (0.25, qa), (0.35, code)], max_bytes, seed + 1)


def _n_math(budget_bytes: float) -> int:
    return max(1, int(budget_bytes // 250) + 1)  # worked solutions average ≈ 300 bytes


def _qa_doc(item: tasks.Item) -> Doc:
    text = f"### Instruction:\n{item['prompt']}\n\n### Response:\n{item['solution']}\n"
    return _doc(f"qa:{item['id']}", text, "math-instruct", task=item["task"])


def _api_qa_doc(mod: Module, name: str, sig: str, doc: str, line: int) -> Doc:
    text = f"### Instruction:\nWhat does `{mod.name}.{name}` do?\n\n### Response:\n`{sig[4:-1]}`: {doc}\n"
    return _doc(f"qa:{mod.rel}:{line}:{name}", text, "api-instruct", module=mod.name)


def long_docs(seed: int, n: int, *, min_bytes: int = 8_000, max_bytes: int = 32_000) -> list[Doc]:
    """`n` naturally long documents (≈ 2-8k tokens): whole modules, or a package's modules concatenated.

    Groups are consecutive modules of one package (`email/`, `asyncio/`, ...) appended until `min_bytes`;
    documents outside `[min_bytes, max_bytes]` are not used.
    """
    groups: list[list[Module]] = []
    for mod in _train_modules():
        pkg = mod.rel.rsplit("/", 1)[0] if "/" in mod.rel else ""
        last = groups[-1] if groups else None
        size = sum(len(m.text) for m in last) if last else 0
        same_pkg = last is not None and pkg and last[0].rel.startswith(pkg + "/")
        if last is not None and same_pkg and size < min_bytes and size + len(mod.text) <= max_bytes:
            last.append(mod)
        else:
            groups.append([mod])
    long = [g for g in groups if min_bytes <= sum(len(m.text) for m in g) <= max_bytes]
    rng = random.Random(seed)
    rng.shuffle(long)
    out = []
    for g in long[:n]:
        text = "\n\n".join(f"# File: Lib/{m.rel}\n{m.text}" for m in g)
        out.append(_doc(f"stdlib-long:{g[0].rel}+{len(g)}", text, "stdlib-long", modules=[m.name for m in g]))
    return out


def sft_examples(seed: int, n: int, *, no_think_fraction: float = 0.2,
                 multi_turn_fraction: float = 0.0) -> list[dict[str, Any]]:
    """Chat examples on training-split math items without near-duplicates of the built-in eval items
    (`tasks.generate_clean`): the assistant thinks (`reasoning_content`) then answers.

    A `no_think_fraction` of them end the user turn with `/no_think` and have an empty reasoning trace
    and the worked solution as the answer (Qwen3's soft switch). A `multi_turn_fraction` of them become
    conversations of 2-3 questions (`_multi_turn`) ending with the same item, where the last `/think` or
    `/no_think` anywhere in the conversation decides the mode of the final answer. The default 0 draws
    nothing from the extra streams, so single-turn output is unchanged.
    """
    rng = random.Random(seed)
    # Separate streams, so the single-turn draws stay as they were; the history items' stream (seed +
    # 4,000,037) is apart from the final items' (+ 2,000,003) and the post-training prompts' (+ 3,000,017).
    mt_rng = random.Random(seed + 5_000_011)
    history = iter(tasks.generate_clean(seed + 4_000_037, 2 * n)) if multi_turn_fraction > 0 else iter(())
    out = []
    for it in tasks.generate_clean(seed + 2_000_003, n):  # no near-duplicates of built-in eval items
        final = _final_answer(it)
        think = rng.random() >= no_think_fraction
        if multi_turn_fraction > 0 and mt_rng.random() < multi_turn_fraction:
            earlier = [next(history) for _ in range(mt_rng.randint(1, 2))]
            messages = _multi_turn(mt_rng, earlier, it, think)
            out.append({"id": f"sft-mt:{it['id']}", "source": "sft-math", "task": it["task"],
                        "answer": it["answer"], "thinking": think, "messages": messages})
            continue
        user = it["prompt"] if think else f"{it['prompt']} /no_think"
        assistant = {"role": "assistant", "content": final if think else it["solution"],
                     "reasoning_content": it["solution"] if think else ""}
        out.append({"id": f"sft:{it['id']}", "source": "sft-math", "task": it["task"], "answer": it["answer"],
                    "thinking": think,
                    "messages": [{"role": "user", "content": user}, assistant]})
    return out


def _multi_turn(rng: random.Random, earlier: list[tasks.Item], last: tasks.Item, think: bool) -> list[dict[str, Any]]:
    """User / assistant turns for `earlier` items then `last`, each user turn with a random flag (or none).

    The mode of each answer is the mode in force at its turn (last flag so far, thinking by default), so
    history answers follow Qwen3's format. The final user turn carries its flag when the history leaves the
    other mode in force, and half the time otherwise, so some finals inherit their mode from an earlier turn.
    """
    messages: list[dict[str, Any]] = []
    mode = True
    for item in earlier:
        flag = rng.choice(["", " /think", " /no_think"])
        mode = mode if not flag else flag == " /think"
        messages.append({"role": "user", "content": item["prompt"] + flag})
        messages.append(_answer(item, mode))
    flag = "" if mode == think and rng.random() < 0.5 else (" /think" if think else " /no_think")
    messages.append({"role": "user", "content": last["prompt"] + flag})
    messages.append(_answer(last, think))
    return messages


def _answer(item: tasks.Item, think: bool) -> dict[str, Any]:
    if think:
        return {"role": "assistant", "content": _final_answer(item), "reasoning_content": item["solution"]}
    return {"role": "assistant", "content": item["solution"], "reasoning_content": ""}


def _final_answer(item: tasks.Item) -> str:
    if item["solution"].rstrip().splitlines()[-1].startswith("####"):
        return f"The answer is {item['answer']}.\n#### {item['answer']}"
    return f"The answer is \\boxed{{{item['answer']}}}."


# -- held-out evaluation sets -----------------------------------------------------------------------
def heldout_docs(n: int, max_chars: int = 4_000) -> list[str]:
    """The first `max_chars` of `n` held-out stdlib modules (deterministic order), for held-out loss."""
    return [m.text[:max_chars] for m in _heldout_modules()[:n]]


@functools.lru_cache(maxsize=1)
def _training_docstrings() -> frozenset[str]:
    """Every docstring of every training module, and each of its paragraphs (eval items repeating one
    of them are dropped: the stdlib copies some docstrings between modules)."""
    docs = {d for m in _train_modules() for d in module_docstrings(m)}
    return frozenset(docs | {p for d in docs for p in d.split("\n\n")})


def bpb_eval_sets(seed: int, n_per_task: int = 300) -> dict[str, list[dict[str, str]]]:
    """Held-out `{context, continuation, id}` items per task, from modules / items no training mix uses.

    - `code_docstring`: `def f(args):\\n    \"\"\"` → the docstring and closing quotes.
    - `prose`: a held-out docstring paragraph, split after its first third (at a word boundary).
    - `math`: `Question: ...\\nAnswer:` → the worked solution.
    """
    rng = random.Random(seed)
    seen = set(_training_docstrings())  # grows with every item taken: no duplicates within a set either
    code, prose = [], []
    for m in _heldout_modules():
        for name, sig, doc, line in function_docs(m):
            if doc not in seen and len(doc) >= 20:
                seen.add(doc)
                body = "\n".join("    " + ln if ln else "" for ln in doc.splitlines()).lstrip()
                code.append({"id": f"{m.rel}:{line}:{name}", "context": f'{sig}\n    """',
                             "continuation": f'{body}\n    """'})
        for k, doc in enumerate(module_docstrings(m)):
            for j, para in enumerate(p for p in doc.split("\n\n") if len(p) >= 120 and not p.startswith(">>>")):
                if para in seen:
                    continue
                seen.add(para)
                cut = para.find(" ", len(para) // 3)
                prose.append({"id": f"{m.rel}:doc{k}:p{j}", "context": para[:cut], "continuation": para[cut:]})
    math = [{"id": it["id"], "context": f"Question: {it['prompt']}\nAnswer:", "continuation": " " + it["solution"]}
            for it in tasks.generate(seed, n_per_task, split="heldout")]
    sets = {"code_docstring": code, "prose": prose, "math": math}
    for key, items in sets.items():
        rng.shuffle(items)
        sets[key] = items[:n_per_task]
    return sets


def all_training_docs(seed: int, max_bytes: int = 4_000_000) -> Iterable[Doc]:
    """Everything the training mixes can draw from for `seed` (for disjointness checks)."""
    yield from pretrain_docs(seed, max_bytes)
    yield from midtrain_docs(seed, max_bytes)
    yield from long_docs(seed, 10_000)
