"""End-to-end pipeline: conservation (also on broken input files), executors, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowlm.data.docs import write_jsonl, write_parquet
from flowlm.data.executor import Executor, LocalExecutor
from flowlm.data.filters import FilterConfig
from flowlm.data.upsample import UpsampleCfg
from flowlm.data.pipeline import DecontamStepCfg, PipelineConfig, run_pipeline

from .planted import planted_corpus

FAST = dict(filters=FilterConfig(langid=None), docs_per_shard=150)


def _outputs(res) -> list[str]:
    return [p.read_text() for p in res.shards]


def test_conservation_with_broken_input_files(tmp_path: Path) -> None:
    docs, _ = planted_corpus(200, seed=5)
    good = tmp_path / "in" / "a.jsonl.gz"
    write_jsonl(good, docs[:100])
    write_parquet(tmp_path / "in" / "b.parquet", docs[100:150])
    broken = tmp_path / "in" / "c.jsonl"
    lines = [json.dumps(d) for d in docs[150:]]
    lines[3] = '{"id": "x", "text": "unterminated'
    lines[7] = json.dumps({"id": "y", "body": "no text field"})
    broken.write_bytes(("\n".join(lines[:10]) + "\n").encode() + b'{"id":"z","text":"\xff\xfe"}\n'
                       + ("\n".join(lines[10:]) + "\n").encode())
    res = run_pipeline([tmp_path / "in"], tmp_path / "out",
                       PipelineConfig(write_excluded=True, **FAST))
    st = json.loads(res.stats_path.read_text())
    assert st["conserved"] and st["quarantine"]["count"] == 3
    wheres = sorted(q["where"].rsplit(":", 1)[1] for q in st["quarantine"]["items"])
    assert wheres == ["11", "4", "8"]  # file:line of each malformed record
    read = st["steps"]["read"]
    assert read["in"]["docs"] == len(docs) + 1 and read["dropped"]["malformed"]["docs"] == 3
    for name, s in st["steps"].items():  # every step: in = kept + dropped
        assert s["in"]["docs"] == s["kept"]["docs"] + sum(d["docs"] for d in s["dropped"].values())
    out_docs = sum(1 for _ in res.iter_docs())
    assert out_docs == list(st["steps"].values())[-1]["out"]["docs"]
    assert st["steps"]["exact"]["dropped"]["exact_duplicate"]["docs"] > 0


def test_local_and_ray_executors_give_identical_output(tmp_path: Path) -> None:
    import ray

    from flowlm.data.executor import RayExecutor

    docs, _ = planted_corpus(300, seed=6)
    cfg = PipelineConfig(**FAST)
    local = run_pipeline(docs, tmp_path / "local", cfg, executor=LocalExecutor(2))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rres = run_pipeline(docs, tmp_path / "ray", cfg, executor=RayExecutor())
    finally:
        ray.shutdown()
    assert _outputs(local) == _outputs(rres) and len(local.shards) >= 2
    assert local.stats.to_dict()["steps"] == rres.stats.to_dict()["steps"]


def test_resume_skips_finished_shards(tmp_path: Path) -> None:
    docs, _ = planted_corpus(200, seed=7)
    cfg = PipelineConfig(**FAST)
    first = run_pipeline(docs, tmp_path / "o", cfg, executor=Executor())
    # simulate a crash after the filter stage: drop later markers, keep the filter ones
    markers = tmp_path / "o" / "work" / "markers"
    for d in markers.iterdir():
        if d.name not in ("read", "filter"):
            for f in d.iterdir():
                f.unlink()
    ex = Executor()
    again = run_pipeline(docs, tmp_path / "o", cfg, executor=ex)
    n_shards = len(first.shards)
    assert ex.skipped == 2 * n_shards  # read + filter shards were not redone
    assert _outputs(first) == _outputs(again)


def test_decontam_stage_drops_planted_benchmark_item(tmp_path: Path, data_dir: Path) -> None:
    docs, _ = planted_corpus(100, seed=8)
    q = json.loads((data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[42])
    docs.append({"id": "leak", "text": docs[0]["text"] + "\n\n" + q["question"] + "\n" + q["answer"],
                 "source": "web", "metadata": {}})
    cfg = PipelineConfig(decontam=DecontamStepCfg(benchmarks=(str(data_dir / "gsm8k/test.jsonl"),)),
                         upsample=UpsampleCfg(mode="none"), **FAST)
    res = run_pipeline(docs, tmp_path / "o", cfg, executor=Executor())
    ids = {d["id"] for d in res.iter_docs()}
    assert "leak" not in ids
    hits = [json.loads(ln) for ln in res.decontam_report.read_text().splitlines()]
    assert {h["doc_id"] for h in hits} == {"leak"} and hits[0]["item_id"] == "42"
    assert res.stats.steps["decontam"].dropped["decontam:gsm8k"].docs >= 1


def test_cli_run_and_filter(tmp_path: Path) -> None:
    import argparse

    from flowlm.data import cli

    docs, _ = planted_corpus(120, seed=9)
    src = tmp_path / "in.jsonl"
    write_jsonl(src, docs)
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    cli.add_parser(sub)
    args = p.parse_args(["data", "run", str(src), "-o", str(tmp_path / "out"), "--executor", "serial",
                         "--set", "filters.langid=null"])
    assert cli.main(args) == 0
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["conserved"]
    args = p.parse_args(["data", "filter", str(src), "-o", str(tmp_path / "f"), "--set",
                         "filters.langid=null"])
    assert cli.main(args) == 0
    bad = p.parse_args(["data", "run", str(src), "-o", str(tmp_path / "x"), "--set", "dedup.nope=1"])
    from flowlm.errors import ConfigError

    with pytest.raises(ConfigError, match="nope"):
        cli.main(bad)
