"""`flowlm ablate`: one recipe run as several arms that differ by overrides, compared side by side.

    flowlm ablate tiny-post --arm base --arm lr_low:stages.sft.optim.lr=1e-4 --run-dir runs/ablate-sft
    flowlm ablate tiny --arm base --arm seed1:stages.pretrain.seed=1 stages.pretrain.steps=100

OLMo 3 chose its SFT and DPO mixes by incremental ablation (a base mix, then one category added at a
time, each scored on the eval suite); the seeds' lesson is that small-scale differences need the noise
of a seed change beside them. Each arm is a full run directory `<run-dir>/<arm>/`: the recipe with
the overrides common to all arms, then the arm's own (`--arm NAME:key=value`, repeatable; the first arm
named is the baseline). Every arm's recipe is validated before anything runs.

Arms share what they have in common. Before an arm's first run, its directory is seeded with the
baseline's finished stages (the record entries, and the stage directories as hard links, or copies
across file systems); the runner then skips every stage whose fingerprint is unchanged and reruns
the rest, from the first stage an override touches on. A stage that reruns removes its seeded
directory first, and hard-linked files are never written in place (stages write new files and
rename them), so no arm changes another's files.

The comparison (`<run-dir>/ablation.json`, the table on stdout, `<run-dir>/ablation.html`) lists, per
arm, the numbers `flow.json` records: final loss and held-out BPB of every training stage, pass@1 per
eval stage, model and suite, the share of answers with a long verbatim run per trace stage, model and
suite, and RL reward (mean of the last quarter of the steps). Each arm also gets
its own `report.html`, and every arm's difference from the baseline is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from html import escape
from pathlib import Path
from typing import Any

from flowlm.errors import ConfigError, FlowError

ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_arms(specs: list[str]) -> dict[str, list[str]]:
    """`NAME` or `NAME:key=value` (repeatable) -> {arm: overrides}, in first-named order."""
    arms: dict[str, list[str]] = {}
    for spec in specs:
        name, _, override = spec.partition(":")
        if not ARM_NAME.match(name):
            raise ConfigError(f"--arm {spec!r}: an arm name is letters, digits, '_', '.', '-' (it names a directory)")
        arms.setdefault(name, [])
        if override:
            if "=" not in override:
                raise ConfigError(f"--arm {spec!r}: after the name comes key=value (e.g. {name}:stages.sft.optim.lr=1e-4)")
            arms[name].append(override)
    if len(arms) < 2:
        raise ConfigError("ablate needs at least two arms (--arm base --arm NAME:key=value ...)")
    return arms


def seed_from(baseline: Path, arm_dir: Path) -> list[str]:
    """Give a new arm directory the baseline's finished stages; returns their names."""
    from flowlm.atomic import atomic_write_text
    from flowlm.flow.record import read_record

    record = read_record(baseline / "flow.json")
    done = {n: st for n, st in record.get("stages", {}).items() if st.get("status") == "done"}
    for name, st in done.items():  # every output must live in a stage directory, or the copy would miss it
        for rel in (st.get("outputs") or {}).values():
            if isinstance(rel, str) and Path(rel).parts[0] not in done:
                raise FlowError(f"{baseline / rel}: an output of stage '{name}' outside the stages' directories; "
                                "cannot seed the arm from it")
    arm_dir.mkdir(parents=True)
    for name in done:
        if (baseline / name).is_dir():
            shutil.copytree(baseline / name, arm_dir / name, copy_function=_link_or_copy, symlinks=True)
    atomic_write_text(arm_dir / "flow.json", json.dumps({**record, "stages": done}, indent=2))
    return list(done)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def arm_numbers(record: dict[str, Any]) -> dict[str, float]:
    """The comparable numbers of one arm's run record, keyed `stage/what`."""
    out: dict[str, float] = {}
    for name, st in record.get("stages", {}).items():
        m = st.get("metrics") or {}
        if isinstance(m.get("final_loss"), (int, float)):
            out[f"{name}/final_loss"] = float(m["final_loss"])
        if isinstance((m.get("eval") or {}).get("bpb"), (int, float)):
            out[f"{name}/bpb"] = float(m["eval"]["bpb"])
        for model, suites in (m.get("results") or {}).items():
            for suite, summary in suites.items():
                if isinstance(summary.get("pass@1"), (int, float)):
                    out[f"{name}/{model}/{suite}/pass@1"] = float(summary["pass@1"])
        for model, suites in (m.get("traces") or {}).items():  # trace stages: verbatim overlap of the answers
            for suite, sm in (suites or {}).items():
                if isinstance(sm, dict) and isinstance(sm.get("long_share"), (int, float)):
                    out[f"{name}/{model}/{suite}/long_share"] = float(sm["long_share"])
        reward = (((m.get("rl") or {}).get("by_quarter") or {}).get("reward") or [])
        finite = [v for v in reward if isinstance(v, (int, float))]
        if finite:
            out[f"{name}/reward_last_quarter"] = float(finite[-1])
    return out


def comparison(numbers: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One row per key any arm has: the values by arm and each arm's difference from the first arm."""
    arms = list(numbers)
    keys = list(dict.fromkeys(k for arm in arms for k in numbers[arm]))
    rows = []
    for key in keys:
        vals = {arm: numbers[arm].get(key) for arm in arms}
        base = vals[arms[0]]
        rows.append({"key": key, "values": vals,
                     "delta": {a: (None if v is None or base is None else v - base) for a, v in vals.items() if a != arms[0]}})
    return rows


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _delta(v: float | None) -> str:
    return "" if v is None else f" ({v:+.4f})"


def print_comparison(rows: list[dict[str, Any]], arms: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ablation: {', '.join(arms)} (in brackets: the difference from {arms[0]})")
    table.add_column("stage / number")
    for arm in arms:
        table.add_column(arm, justify="right")
    for row in rows:
        table.add_row(row["key"], *(_cell(row["values"][a]) + (_delta(row["delta"].get(a)) if a != arms[0] else "")
                                    for a in arms))
    Console().print(table)


def write_page(out: Path, rows: list[dict[str, Any]], arms: dict[str, list[str]], shared: dict[str, list[str]]) -> None:
    from flowlm.atomic import atomic_write_text
    from flowlm.flow.html_report import STYLE

    names = list(arms)
    head = "".join(f'<th><a href="{escape(a)}/report.html">{escape(a)}</a></th>' for a in names)
    body = "".join("<tr><td>" + escape(r["key"]) + "</td>" + "".join(
        f'<td class="num">{_cell(r["values"][a])}{escape(_delta(r["delta"].get(a))) if a != names[0] else ""}</td>'
        for a in names) + "</tr>" for r in rows)
    arms_list = "".join(f"<li><b>{escape(a)}</b>: <code>{escape(' '.join(ov) or '(the recipe as is)')}</code>; "
                        + (f"shared with {escape(names[0])}: {escape(', '.join(shared.get(a, [])) or 'nothing')}"
                           if a != names[0] else "the baseline") + "</li>" for a, ov in arms.items())
    atomic_write_text(out, "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ablation</title>"
                      f"<style>{STYLE}</style></head><body><h1>Ablation</h1><ul>{arms_list}</ul>"
                      f"<table><tr><th>stage / number</th>{head}</tr>{body}</table>"
                      f"<p class=\"muted\">In brackets: the difference from {escape(names[0])}.</p></body></html>\n")


def add_parser(subparsers: Any) -> None:
    """Register the `ablate` verb on the top-level CLI."""
    p = subparsers.add_parser("ablate", help="run a recipe as arms that differ by overrides, sharing unchanged "
                              "stages, and compare their numbers")
    p.add_argument("recipe", help="built-in recipe name or YAML path")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every arm")
    p.add_argument("--arm", action="append", default=[], metavar="NAME[:key=value]",
                   help="an arm and one of its overrides (repeatable; the first arm named is the baseline)")
    p.add_argument("--run-dir", type=Path, default=None, help="where the arms' run directories go "
                   "(default runs/ablate-<recipe>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from flowlm.flow.record import read_record
    from flowlm.flow.runner import load_recipe, run_recipe

    arms = parse_arms(args.arm)
    recipes = {arm: load_recipe(args.recipe, [*args.overrides, *ov]) for arm, ov in arms.items()}  # all checked first
    root = args.run_dir or Path("runs") / f"ablate-{recipes[next(iter(arms))][0].name}"
    names = list(arms)
    for arm in names:
        arm_dir, seeded = root / arm, []
        if arm != names[0] and not arm_dir.exists() and (root / names[0] / "flow.json").is_file():
            seeded = seed_from(root / names[0], arm_dir)
        print(f"ablate: arm '{arm}' in {arm_dir}" + (f" (seeded with {len(seeded)} stages of '{names[0]}')"
                                                     if seeded else ""), file=sys.stderr)
        recipe, origin = recipes[arm]
        run_recipe(recipe, origin, [*args.overrides, *arms[arm]], arm_dir, show_progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    from flowlm.atomic import atomic_write_text
    from flowlm.flow.html_report import write_html

    records = {arm: read_record(root / arm / "flow.json") for arm in names}
    numbers = {arm: arm_numbers(rec) for arm, rec in records.items()}
    base_fp = {n: st.get("fingerprint") for n, st in records[names[0]].get("stages", {}).items()}
    shared = {arm: [n for n, st in records[arm].get("stages", {}).items() if base_fp.get(n) == st.get("fingerprint")]
              for arm in names[1:]}  # the stages an arm has in common with the baseline (run once, for both)
    for arm in names:
        write_html(root / arm)
    rows = comparison(numbers)
    print_comparison(rows, names)
    atomic_write_text(root / "ablation.json", json.dumps(
        {"recipe": args.recipe, "overrides": args.overrides, "arms": arms, "shared": shared, "rows": rows}, indent=2) + "\n")
    write_page(root / "ablation.html", rows, arms, shared)
    print(f"ablate: {root / 'ablation.json'}, {root / 'ablation.html'}", file=sys.stderr)
    return 0
