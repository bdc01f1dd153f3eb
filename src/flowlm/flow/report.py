"""Human-readable views of a run record: the per-stage table, the BPB-by-stage table, the generation-eval
table (eval stages: model × suite, pass@1 with majority vote and the contamination share beside it) and the
RL table (rl stages: reward by quarter of the steps, per domain, informative and truncated shares, in-loop
pass@1 first → last; `flowlm.rl.summary`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from flowlm.errors import FlowError
from flowlm.flow.record import RECORD, read_record


def load_record(run_dir: Path) -> dict[str, Any]:
    """The run record of `run_dir`; FlowError naming `flow.json` when it is missing, corrupt or not a run record."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        raise FlowError(f"{path}: no run record (is this a flowlm run directory?)")
    return read_record(path)


def bpb_rows(data: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(label, eval metrics) for the untrained model and after every stage that evaluated."""
    rows: list[tuple[str, dict[str, float]]] = []
    for name, st in data.get("stages", {}).items():
        metrics = st.get("metrics") or {}
        if "eval_init" in metrics and not rows and st.get("config", {}).get("init") == "scratch":
            rows.append(("untrained", metrics["eval_init"]))
        if metrics.get("eval"):
            rows.append((name, metrics["eval"]))
    return rows


def print_report(run_dir: Path, console: Console | None = None) -> dict[str, Any]:
    data = load_record(run_dir)
    console = console or Console()
    stages = Table(title=f"flow: {data.get('recipe', {}).get('name', '?')}  ({run_dir})")
    for col in ("stage", "kind", "status", "wall s", "headline"):
        stages.add_column(col)
    for name, st in data.get("stages", {}).items():
        stages.add_row(name, st.get("kind", "?"), st.get("status", "?"), _wall(st.get("wall_s")), headline(st))
    console.print(stages)
    rows = bpb_rows(data)
    if rows:
        keys = sorted({k for _, r in rows for k in r if k.endswith("/bpb")}) + ["bpb", "heldout_loss"]
        keys = [k for k in keys if any(k in r for _, r in rows)]
        table = Table(title="BPB by stage (lower is better; OLMES per-instance mean)")
        table.add_column("after")
        for k in keys:
            table.add_column(k.replace("/bpb", ""), justify="right")
        for label, r in rows:
            table.add_row(label, *(_fmt(r.get(k)) for k in keys))
        console.print(table)
    evals = eval_rows(data)
    if evals:
        console.print(eval_table(evals))
    rl = {name: st["metrics"]["rl"] for name, st in data.get("stages", {}).items()
          if isinstance((st.get("metrics") or {}).get("rl"), dict)}
    if rl:
        console.print(rl_table(rl))
    traces = trace_rows(data)
    if traces:
        table = Table(title="verbatim overlap of eval answers with the models' training data (trace stages: "
                            "match = share of answer tokens in a verbatim match; long = share of answers with a "
                            "long verbatim run)")
        for col in ("stage", "model", "suite", "answers", "match", "long", "longest", "longest kept span"):
            table.add_column(col, justify="right" if col in ("answers", "match", "long", "longest") else "left")
        for row in traces:
            table.add_row(*row)
        console.print(table)
    return data


def trace_rows(data: dict[str, Any]) -> list[list[str]]:
    """(stage, model, suite, answers, match coverage, long share, longest run, longest kept span) per trace
    stage, model and suite (`flowlm.flow.stages.trace`)."""
    rows = []
    for name, st in data.get("stages", {}).items():
        for model, suites in ((st.get("metrics") or {}).get("traces") or {}).items():
            for suite, sm in suites.items():
                if not isinstance(sm, dict) or "outputs" not in sm:
                    continue
                top = (sm.get("top") or [{}])[0] if sm.get("top") else {}
                span = f"{top['text'][:40]!r} ({top['tokens']} tokens)" if top else "-"
                rows.append([name, model, suite, str(sm["outputs"]), _pct(sm.get("match_coverage")),
                             _pct(sm.get("long_share")), str(sm.get("longest", "-")), span])
    return rows


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.0%}"


def headline(st: dict[str, Any]) -> str:
    """A stage's key numbers in one line: loss and speed, vocabulary, eval shape, RL reward first -> last, and
    for a post-training data stage what its accounting kept of each step (`prompts 180/200`)."""
    m = st.get("metrics") or {}
    head = ", ".join(f"{k}={_fmt(m[k])}" for k in ("final_loss", "tok_s", "mfu", "vocab_size", "pretrain_tokens") if k in m)
    if isinstance(m.get("accounting"), dict):
        head = ", ".join(f"{step} {(c.get('kept') or {}).get('docs', 0)}/{(c.get('in') or {}).get('docs', 0)}"
                         for step, c in m["accounting"].items() if isinstance(c, dict))
    if isinstance(m.get("results"), dict):
        head = f"{len(m['results'])} model(s) x {len({s for r in m['results'].values() for s in r})} suite(s)"
    reward = ((m.get("rl") or {}).get("by_quarter") or {}).get("reward")
    if reward:
        head = f"reward {_span(reward)}, " + head
    return head


def rl_table(summaries: dict[str, dict[str, Any]]) -> Table:
    """rl stage × (steps, reward by quarter, per-domain reward first -> last quarter, informative and
    truncated shares over the run (the mean of the near-equal quarters), in-loop pass@1 first -> last eval).
    The run record has the rest."""
    from flowlm.rl.summary import finite_mean

    table = Table(title="RL by stage (reward: mean per quarter of the steps; by domain: first -> last quarter; "
                        "in-loop pass@1: first -> last eval, steps in brackets)")
    for col in ("stage", "steps", "reward", "by domain", "informative", "truncated", "in-loop pass@1"):
        table.add_column(col, justify="right" if col in ("steps", "informative", "truncated") else "left")
    for stage, sm in summaries.items():
        q = sm.get("by_quarter") or {}
        domains = "\n".join(f"{k.split('/', 1)[1]} {_span(v)}" for k, v in q.items() if k.startswith("reward/"))
        evals = "\n".join(f"{suite} {_short(c['first'][1])} -> {_short(c['last'][1])} ({c['first'][0]}-{c['last'][0]})"
                           for suite, c in (sm.get("generation_eval") or {}).items())
        table.add_row(stage, str(sm.get("steps", "-")), " ".join(_short(v) for v in q.get("reward") or ()) or "-",
                      domains or "-", _short(finite_mean(q.get("informative_share") or ())),
                      _short(finite_mean(q.get("truncated_share") or ())), evals or "-")
    return table


def _short(v: Any) -> str:
    """Three significant digits ("0.249"), "-" for None."""
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def _span(values: list[Any] | None) -> str:
    """First -> last of a per-quarter list ("0.249 -> 0.533"; "-" when empty)."""
    vals = [v for v in values or () if v is not None]
    if not vals:
        return "-"
    return _short(vals[0]) if len(vals) == 1 else f"{_short(vals[0])} -> {_short(vals[-1])}"




def eval_rows(data: dict[str, Any]) -> list[tuple[str, str, dict[str, dict[str, Any]]]]:
    """(eval stage, model, {suite: summary}) for every eval stage's recorded results."""
    rows = []
    for name, st in data.get("stages", {}).items():
        for model, suites in ((st.get("metrics") or {}).get("results") or {}).items():
            rows.append((name, model, suites))
    return rows


def eval_table(rows: list[tuple[str, str, dict[str, dict[str, Any]]]]) -> Table:
    """Stage/model × suite; each cell `pass@1`, then `maj@n` (math suites) and the contamination share."""
    suites = list(dict.fromkeys(s for _, _, by_suite in rows for s in by_suite))
    table = Table(title="generation eval by stage (pass@1 = mean correctness over n samples; maj = majority vote; "
                        "contam = share of items found in the run's training data)")
    table.add_column("stage")
    table.add_column("model")
    for s in suites:
        table.add_column(s, justify="right")
    for stage, model, by_suite in rows:
        table.add_row(stage, model, *(_eval_cell(by_suite.get(s)) for s in suites))
    return table


def _eval_cell(summary: dict[str, Any] | None, sep: str = "\n") -> str:
    if not summary:
        return "-"
    parts = [f"pass@1 {_fmt(summary.get('pass@1'))}"]
    maj = next((k for k in summary if k.startswith("maj@")), None)
    if maj is not None:
        parts.append(f"{maj} {_fmt(summary[maj])}")
    if "contamination" in summary:
        parts.append(f"contam {summary['contamination']:.0%}")
    return sep.join(parts)


def _wall(v: Any) -> str:
    """Seconds to one decimal ("7.1"), "-" when unknown."""
    return f"{v:,.1f}" if isinstance(v, (int, float)) else "-"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):  # small values keep 4 significant digits (a loss of 2e-6 is not "0.0000")
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}" if v == 0 or abs(v) >= 0.01 else f"{v:.4g}"
    return str(v)
