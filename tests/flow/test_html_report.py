"""The report page: hand-checked SVG geometry, escaping, and the page of a real run as headless Chromium
renders it (Debian package `chromium`; `.ci/run` installs it)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from flowlm.flow.html_report import read_metrics, render_html
from flowlm.flow.svg import line_chart, points_of, thin

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_chart_geometry_is_hand_checked():
    # 640 x 240: the plot spans x 64..628 and y 204 (bottom) .. 28 (top)
    svg = line_chart({"loss": [(0, 0), (10, 5), (5, float("nan"))]}, title="t")
    assert 'points="64.0,204.0 628.0,28.0"' in svg  # the NaN point is skipped, not drawn at 0
    assert ">0<" in svg and ">10<" in svg and ">5<" in svg  # min / max tick labels
    two = line_chart({"a": [(0, 1)], "b": [(1, 3)]}, title="t")
    assert two.count("<circle") == 2 and 'cx="64.0" cy="204.0"' in two and 'cx="628.0" cy="28.0"' in two
    assert "no data" in line_chart({"a": [], "b": [(1, math.inf)]}, title="empty")


def test_points_keep_the_last_value_per_step_and_thin_keeps_the_end():
    rows = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 1, "loss": 2.5},  # a resumed step 1
            {"step": 3, "loss": None}, {"step": 4, "loss": True}, {"loss": 1.0}, {"step": 5, "loss": float("inf")}]
    assert points_of(rows, "loss") == [(1.0, 2.5), (2.0, 2.0)]
    pts = [(float(i), float(i)) for i in range(1001)]
    out = thin(pts, limit=400)
    assert len(out) <= 401 and out[0] == pts[0] and out[-1] == pts[-1]


def test_every_value_is_escaped_and_evals_are_tabled(tmp_path):
    data = {"recipe": {"name": "<b>x</b>", "origin": "r.yaml", "overrides": ["a=<script>alert(1)</script>"]},
            "stages": {"ev": {"kind": "eval", "status": "done", "inputs": {"/p/<i>": "abc"},
                              "metrics": {"results": {"sft": {"builtin": {"pass@1": 0.25, "maj@4": 0.5,
                                                                          "contamination": 0.0}}}}}}}
    page = render_html(tmp_path, data)
    assert "<script>" not in page and "&lt;script&gt;" in page and "<b>x</b>" not in page
    assert "<code>/p/&lt;i&gt; (abc)</code>" in page  # an input outside the run: its path, not a link
    assert "pass@1 0.2500, maj@4 0.5000, contam 0%" in page


def test_a_torn_metrics_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}] and read_metrics(tmp_path / "missing") == []


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="needs chromium (Debian package `chromium`; .ci/run installs it)")
def test_the_page_of_a_run_renders_in_headless_chromium(tmp_path):
    from tests.flow.test_post_flow import BASE, flowlm, write_recipe

    assert CHROMIUM is not None, "CI installs chromium (.ci/run); it is missing"
    recipe = {**BASE, "stages": {k: BASE["stages"][k] for k in ("corpus", "tokenizer", "pretrain")}}
    run = tmp_path / "run"
    proc = flowlm("run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--run-dir", str(run), "--no-progress")
    assert f"report: {run / 'report.html'}" in proc.stderr and (run / "report.html").is_file()
    out = tmp_path / "elsewhere" / "page.html"
    flowlm("report", str(run), "--html", str(out))
    html = out.read_text()
    # nothing is fetched: the only URL is the SVG namespace, and no element has a source
    assert set(re.findall(r"https?://[^\"' ]+", html)) == {"http://www.w3.org/2000/svg"} and "src=" not in html
    assert 'href="../run/pretrain/model"' in html  # links are relative to where the page is
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for stage in ("corpus", "tokenizer", "pretrain"):
        assert f'id="stage-{stage}"' in dom.stdout
    for title in ("Run", "Stages", "BPB by stage", "Training curves"):
        assert f"<h2>{title}</h2>" in dom.stdout
    # the BPB chart (untrained -> pretrain) and pretrain's loss and held-out BPB curves: parsed as SVG
    assert dom.stdout.count("<polyline") >= 3 and 'data-series="loss"' in dom.stdout
    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1000,1400", out.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
