"""The run's report as one self-contained web page (`report.html`): the run record made browsable.

`flowlm run` and `flowlm train` write `<run>/report.html` after every run; `flowlm report RUN --html
[PATH]` writes it on demand. Everything on the page is read from `flow.json` and the stages' own
`metrics.jsonl`, the same files the text report reads:

- the run: recipe, origin, overrides, flowlm version, source hash and git commit;
- stages: kind, status, wall time, fingerprint, what each read (linked to the stage that wrote it,
  with the content hash the fingerprint used) and wrote (linked to the files), the headline numbers;
- BPB by stage, as a table and a chart; training curves (loss, held-out BPB, RL reward per domain);
- generation evals (pass@1, majority vote, contamination) and the RL summary per stage.

No JavaScript, no external stylesheet, font or image: charts are inline SVG (`flowlm.flow.svg`), so the
page opens offline and from a copied run directory. Every value is HTML-escaped.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from typing import Any

from flowlm.flow.report import (_eval_cell, _fmt, _short, _span, _wall, bpb_rows, eval_rows, headline, load_record,
                                 trace_rows)
from flowlm.flow.svg import line_chart, points_of

STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 12px}
table{border-collapse:collapse;margin:8px 0 20px}th,td{border:1px solid #ccc;padding:3px 8px;vertical-align:top}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px}h2{margin-top:32px;border-bottom:1px solid #ddd}svg.chart{display:block;margin:6px 0 16px}
svg .title{font-size:13px;font-weight:600}.muted{color:#777}"""

TRAIN_CURVES = ("loss", "eval/bpb")  # per training stage; rl stages add reward and reward/<domain>


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a stage's metrics.jsonl; a torn or bad line (a killed writer) is skipped, not fatal."""
    from flowlm.jsonlines import BadLine, iter_lines, parse_object

    rows = []
    if not path.is_file():
        return rows
    for _, raw in iter_lines(path):
        try:
            rows.append(parse_object(raw))
        except BadLine:
            continue
    return rows


def _link(target: Path, base: Path, label: str) -> str:
    return f'<a href="{escape(os.path.relpath(target, base))}">{escape(label)}</a>'


def _table(head: list[str] | None, rows: list[list[str]], num: set[int] = frozenset()) -> str:
    """Cells are HTML already (escaped by the caller); no header row when `head` is None."""
    out = ["<table>"] + (["<tr>", *(f"<th>{h}</th>" for h in head), "</tr>"] if head else [])
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>")
    return "".join(out) + "</table>"


def _run_section(run_dir: Path, data: dict[str, Any]) -> str:
    recipe, code = data.get("recipe") or {}, data.get("code") or {}
    items = [("run directory", str(run_dir)), ("recipe", f"{recipe.get('name', '?')} ({recipe.get('origin', '?')})"),
             ("overrides", " ".join(recipe.get("overrides") or []) or "none"),
             ("flowlm", f"{code.get('version', data.get('flowlm_version', '?'))}, source {code.get('source_sha256', '?')}"
                        + (f", git {code['git_commit']}" if code.get("git_commit") else "")),
             ("created", str(data.get("created", "?")))]
    return "<h2>Run</h2>" + _table(None, [[f"<b>{escape(k)}</b>", f"<code>{escape(v)}</code>"] for k, v in items])


def _stages_section(run_dir: Path, base: Path, data: dict[str, Any]) -> str:
    stages = data.get("stages", {})
    rows = []
    for name, st in stages.items():
        reads = []
        for ref, digest in (st.get("inputs") or {}).items():
            label = f"{ref} ({str(digest)[:10]})"
            reads.append(f'<a href="#stage-{escape(ref)}">{escape(label)}</a>' if ref in stages
                         else f"<code>{escape(label)}</code>")
        writes = [_link(run_dir / rel, base, key) for key, rel in (st.get("outputs") or {}).items()
                  if isinstance(rel, str)]
        rows.append([f'<span id="stage-{escape(name)}">{escape(name)}</span>', escape(str(st.get("kind", "?"))),
                     escape(str(st.get("status", "?"))), _wall(st.get("wall_s")),
                     f"<code>{escape(str(st.get('fingerprint', ''))[:12])}</code>", "<br>".join(reads) or "-",
                     "<br>".join(writes) or "-", escape(headline(st)) or "-"])
    return ("<h2>Stages</h2><p class=\"muted\">A stage reruns when its fingerprint changes: it hashes the "
            "config, the model section, the content hashes of what it reads (in brackets) and the code.</p>"
            + _table(["stage", "kind", "status", "wall s", "fingerprint", "reads", "writes", "headline"], rows, {3}))


def _bpb_section(data: dict[str, Any]) -> str:
    rows = bpb_rows(data)
    if not rows:
        return ""
    keys = sorted({k for _, r in rows for k in r if k.endswith("/bpb")}) + ["bpb", "heldout_loss"]
    keys = [k for k in keys if any(k in r for _, r in rows)]
    table = _table(["after", *(escape(k.replace("/bpb", "")) for k in keys)],
                   [[escape(label), *(escape(_fmt(r.get(k))) for k in keys)] for label, r in rows],
                   set(range(1, len(keys) + 1)))
    series = {k.replace("/bpb", ""): [(float(i), float(r[k])) for i, (_, r) in enumerate(rows)
                                      if isinstance(r.get(k), (int, float))]
              for k in keys if k != "heldout_loss"}
    order = ", ".join(f"{i}: {label}" for i, (label, _) in enumerate(rows))
    chart = line_chart(series, title="BPB by stage (lower is better)", xlabel=f"stage ({order})", ylabel="BPB",
                       width=760)
    return "<h2>BPB by stage</h2><p class=\"muted\">OLMES per-instance mean, held-out gold continuations.</p>" + table + chart


def _curves_section(run_dir: Path, data: dict[str, Any]) -> str:
    charts = []
    for name, st in data.get("stages", {}).items():
        rel = (st.get("outputs") or {}).get("metrics")
        if not isinstance(rel, str):
            continue
        rows = read_metrics(run_dir / rel)
        keys = list(TRAIN_CURVES)
        if st.get("kind") == "rl":
            keys = ["reward", *sorted({k for r in rows for k in r if k.startswith("reward/")}), "loss"]
        loss = {k: points_of(rows, k) for k in keys if k != "eval/bpb"}
        charts.append(f'<h3 id="curves-{escape(name)}">{escape(name)}</h3>')
        charts.append(line_chart(loss, title=f"{name}: " + ", ".join(loss), ylabel="value"))
        bpb = points_of(rows, "eval/bpb")
        if bpb:
            charts.append(line_chart({"eval/bpb": bpb}, title=f"{name}: held-out BPB", ylabel="BPB"))
    return "<h2>Training curves</h2>" + "".join(charts) if charts else ""


def _eval_section(data: dict[str, Any]) -> str:
    rows = eval_rows(data)
    if not rows:
        return ""
    suites = list(dict.fromkeys(s for _, _, by_suite in rows for s in by_suite))
    body = [[escape(stage), escape(model), *(escape(_eval_cell(by.get(s), sep=", ")) for s in suites)]
            for stage, model, by in rows]
    return ("<h2>Generation evals</h2><p class=\"muted\">pass@1: mean correctness over n samples; maj: majority "
            "vote; contam: share of items found in the evaluated models' training data.</p>"
            + _table(["stage", "model", *(escape(s) for s in suites)], body))


def _rl_section(data: dict[str, Any]) -> str:
    from flowlm.rl.summary import finite_mean

    rows = []
    for name, st in data.get("stages", {}).items():
        sm = (st.get("metrics") or {}).get("rl")
        if not isinstance(sm, dict):
            continue
        q = sm.get("by_quarter") or {}
        domains = "<br>".join(escape(f"{k.split('/', 1)[1]} {_span(v)}") for k, v in q.items() if k.startswith("reward/"))
        rows.append([f'<a href="#curves-{escape(name)}">{escape(name)}</a>', escape(str(sm.get("steps", "-"))),
                     escape(" ".join(_short(v) for v in q.get("reward") or ()) or "-"), domains or "-",
                     _short(finite_mean(q.get("informative_share") or ())),
                     _short(finite_mean(q.get("truncated_share") or ()))])
    if not rows:
        return ""
    return ("<h2>RL</h2><p class=\"muted\">Reward: mean per quarter of the steps; by domain: first to last "
            "quarter.</p>" + _table(["stage", "steps", "reward", "by domain", "informative", "truncated"], rows, {1, 4, 5}))


def _trace_section(data: dict[str, Any]) -> str:
    rows = trace_rows(data)
    if not rows:
        return ""
    return ("<h2>Verbatim overlap with training data</h2><p class=\"muted\">Trace stages: eval answers traced "
            "against the token stores each model and its ancestors trained on (OLMoTrace's rules). match: share "
            "of answer tokens in a verbatim match; long: share of answers with a long verbatim run; longest: "
            "the longest run, in tokens.</p>"
            + _table(["stage", "model", "suite", "answers", "match", "long", "longest", "longest kept span"],
                     [[escape(c) for c in row] for row in rows], {3, 4, 5, 6}))


def render_html(run_dir: Path, data: dict[str, Any], base: Path | None = None) -> str:
    """The page for the run record `data` of `run_dir`; links are relative to `base` (the page's folder)."""
    base = base or run_dir
    title = f"flowlm run: {(data.get('recipe') or {}).get('name', '?')}"
    body = [f"<h1>{escape(title)}</h1>", _run_section(run_dir, data), _stages_section(run_dir, base, data),
            _bpb_section(data), _curves_section(run_dir, data), _eval_section(data), _trace_section(data),
            _rl_section(data),
            "<p class=\"muted\">Generated by <code>flowlm report --html</code> from flow.json and the stages' "
            "metrics.jsonl.</p>"]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>\n")


def write_html(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report page (default `<run>/report.html`, atomically); returns where it went."""
    from flowlm.atomic import atomic_write_text

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    data = load_record(run_dir)
    atomic_write_text(out, render_html(run_dir.resolve(), data, out.resolve().parent))
    return out

