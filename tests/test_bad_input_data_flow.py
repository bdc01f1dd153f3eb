"""Bad input to `flowlm data`, `flowlm run` / `train` / `report` and the readers they share, run as a user runs
them: the installed entry point in a subprocess. Each case checks the exit code and that stderr is one
`error: ...` line naming the file / line / key at fault (never `internal error`, never a traceback); the
pipeline cases also check that a rerun in the same `--out` never returns an earlier call's documents, and
still resumes when nothing changed. No training: the recipes fail before any stage runs.
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
from pathlib import Path

import pytest
import zstandard

from tests.test_cli_verbs import one_error_line, run_flowlm, step_table

WORDS = ("the quick brown fox jumps over lazy dog while people talk about art science history and watch "
         "far away from many").split()


def write_docs(path: Path, n: int, seed: int = 0, words: int = 200) -> Path:
    """`n` documents of `words` random common words each (they pass the default filters)."""
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"id": f"d{seed}-{i}", "text": " ".join(rng.choices(WORDS, k=words))}) + "\n"
                            for i in range(n)))
    return path


def fails(r: subprocess.CompletedProcess[str], code: int, *names: str) -> str:
    """The one `error:` line of a run that exited `code`; it names each of `names` and is not an internal error."""
    assert r.returncode == code, (r.returncode, r.stderr)
    line = one_error_line(r)
    assert "internal error" not in line, line
    for name in names:
        assert name in line, (name, line)
    return line


def kept_ids(out: Path) -> list[str]:
    return [json.loads(ln)["id"] for p in sorted((out / "docs").glob("part-*.jsonl"))
            for ln in p.read_text().splitlines()]


def marker_times(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "work" / "markers").rglob("*.done")}


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_docs(tmp_path / "docs.jsonl", 20)


# --- 1. a rerun in the same --out: recomputed when inputs or config changed, resumed when not -----------------


def test_rerun_with_other_input_recomputes_and_same_input_resumes(docs: Path, tmp_path: Path) -> None:
    out = tmp_path / "outd"
    first = run_flowlm("data", "filter", str(docs), "-o", str(out), tmpdir=tmp_path)
    assert first.returncode == 0, first.stderr
    assert len(kept_ids(out)) == 20 and "note:" not in first.stderr
    before = marker_times(out)
    same = run_flowlm("data", "filter", str(docs), "-o", str(out), tmpdir=tmp_path)
    assert same.returncode == 0 and "note:" not in same.stderr, same.stderr
    assert marker_times(out) == before  # every task answered from its marker: nothing redone
    assert len(kept_ids(out)) == 20

    other = write_docs(tmp_path / "other.jsonl", 5, seed=1)
    r = run_flowlm("data", "filter", str(other), "-o", str(out), tmpdir=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "note:" in r.stderr and "inputs" in r.stderr and str(out) in r.stderr
    assert step_table(r.stderr)["filter"] == (5, 5)
    assert sorted(kept_ids(out)) == sorted(f"d1-{i}" for i in range(5))


def test_rerun_with_other_config_recomputes(docs: Path, tmp_path: Path) -> None:
    out = tmp_path / "outd"
    assert run_flowlm("data", "filter", str(docs), "-o", str(out), tmpdir=tmp_path).returncode == 0
    r = run_flowlm("data", "filter", str(docs), "-o", str(out), "--set", "filters.length.min_words=100000",
                   tmpdir=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "note:" in r.stderr and "config" in r.stderr
    assert step_table(r.stderr)["filter"] == (20, 0) and kept_ids(out) == []
    stats = json.loads((out / "stats.json").read_text())
    assert stats["steps"]["filter"]["out"]["docs"] == 0
    assert stats["config"]["filters"]["length"]["min_words"] == 100000
    # executor settings do not change results: a rerun with other --workers still resumes
    before = marker_times(out)
    again = run_flowlm("data", "filter", str(docs), "-o", str(out), "--set", "filters.length.min_words=100000",
                       "--workers", "1", tmpdir=tmp_path)
    assert again.returncode == 0 and "note:" not in again.stderr and marker_times(out) == before


def test_rerun_after_input_file_changes_in_place_recomputes(docs: Path, tmp_path: Path) -> None:
    out = tmp_path / "outd"
    assert run_flowlm("data", "filter", str(docs), "-o", str(out), tmpdir=tmp_path).returncode == 0
    write_docs(docs, 3, seed=2)  # same path, new content
    r = run_flowlm("data", "filter", str(docs), "-o", str(out), tmpdir=tmp_path)
    assert r.returncode == 0 and "note:" in r.stderr, r.stderr
    assert sorted(kept_ids(out)) == sorted(f"d2-{i}" for i in range(3))


def test_stdin_rerun_resumes_and_other_stdin_recomputes(docs: Path, tmp_path: Path) -> None:
    out = tmp_path / "outd"
    for _ in range(2):
        r = run_flowlm("data", "filter", "-o", str(out), stdin=docs.read_text(), tmpdir=tmp_path)
        assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
    r = run_flowlm("data", "filter", "-o", str(out), stdin=write_docs(tmp_path / "b.jsonl", 4, seed=3).read_text(),
                   tmpdir=tmp_path)
    assert r.returncode == 0 and "note:" in r.stderr and len(kept_ids(out)) == 4


def test_decon_rerun_without_decon_drops_the_stale_report(docs: Path, tmp_path: Path) -> None:
    out = tmp_path / "outd"
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": "what is two plus two", "answer": "four"}) + "\n")
    assert run_flowlm("data", "decon", str(docs), "--bench", str(bench), "-o", str(out),
                      tmpdir=tmp_path).returncode == 0
    assert (out / "decontam_report.jsonl").exists()
    r = run_flowlm("data", "filter", str(docs), "-o", str(out), tmpdir=tmp_path)
    assert r.returncode == 0 and not (out / "decontam_report.jsonl").exists()


def test_run_pipeline_on_other_documents_in_the_same_out_dir(tmp_path: Path) -> None:
    """The library call with documents (spooled into work/00_input): other documents recompute, a crash
    (lost markers of the later step) resumes with the earlier step's markers."""
    from flowlm.data.executor import Executor
    from flowlm.data.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig.model_validate({"dedup": {"exact": None, "minhash": None, "substring": None},
                                         "upsample": {"mode": "none"}})
    rows = [json.loads(ln) for ln in write_docs(tmp_path / "a.jsonl", 6).read_text().splitlines()]
    first = run_pipeline(rows, tmp_path / "o", cfg, executor=Executor())
    assert len(list(first.iter_docs())) == 6
    for marker in (tmp_path / "o" / "work" / "markers" / "filter").iterdir():
        marker.unlink()  # a crash inside the filter step
    ex = Executor()
    assert len(list(run_pipeline(rows, tmp_path / "o", cfg, executor=ex).iter_docs())) == 6
    assert ex.skipped == 1  # the read step's one shard
    ex = Executor()
    again = run_pipeline(rows[:2], tmp_path / "o", cfg, executor=ex)
    assert ex.skipped == 0 and [d["id"] for d in again.iter_docs()] == [r["id"] for r in rows[:2]]


# --- 2. benchmark files that hold no benchmark ---------------------------------------------------------------


@pytest.mark.parametrize("name, content, says", [
    ("nf.jsonl", '{"foo": 1}\n', "no benchmark items"),
    ("empty.jsonl", "", "no benchmark items"),
    ("a.json", "[1, 2]\n", "not an object"),
    ("bad.json", "[{\"question\": 1,\n", "invalid JSON"),
    ("x.jsonl.gz", "garbage\n", "not a valid gzip file"),
    ("SOMEDIR", None, "is a directory"),
    # one row of three without a question/answer field: named by line, not left out of the index
    ("partial.jsonl", '{"question": "What is 2+2?"}\n\n{"foo": 1}\n{"answer": "4"}\n', ":3: benchmark row without"),
    ("partial.json", '[{"problem": "p"}, {"id": 7}]\n', ": item 1: benchmark row without"),
])
def test_decon_bad_benchmark_is_one_line(docs: Path, tmp_path: Path, name: str, content: str | None,
                                         says: str) -> None:
    bench = tmp_path / name
    if content is None:
        bench.mkdir()
    else:
        bench.write_text(content)
    out = tmp_path / "never"
    r = run_flowlm("data", "decon", str(docs), "--bench", str(bench), "-o", str(out), tmpdir=tmp_path)
    fails(r, 1, str(bench), says)
    assert not out.exists()  # stopped before any work


# --- 3, 4, 9. recipes and config files -----------------------------------------------------------------------


@pytest.mark.parametrize("text, says", [
    (b"name: x\nstages: {}\n", ["'stages'", "no stages"]),
    (b"name: x\nstages: {}\nname: y\n", [":3:", "duplicate key 'name'", "line 1"]),
    (b"name: x\nstages:\n  corpus: {source: builtin, source: files}\n", [":3:", "duplicate key 'source'"]),
    (b"name: x\xff\nstages: {}\n", [":1:", "not UTF-8", "offset 7"]),
    # an alias to its own ancestor: a RecursionError ("internal error") until 2026-12-07
    (b"name: x\nstages:\n  a: &a {kind: train, loop: [*a]}\n", ["an alias refers to a node that contains it"]),
])
def test_bad_recipe_is_one_line(tmp_path: Path, text: bytes, says: list[str]) -> None:
    recipe = tmp_path / "n.yaml"
    recipe.write_bytes(text)
    r = run_flowlm("run", str(recipe), "--run-dir", str(tmp_path / "rd"), tmpdir=tmp_path)
    fails(r, 2, str(recipe), *says)
    assert not (tmp_path / "rd").exists()


def test_recipe_path_that_is_a_directory(tmp_path: Path) -> None:
    fails(run_flowlm("run", str(tmp_path), tmpdir=tmp_path), 2, str(tmp_path), "is a directory")


@pytest.mark.parametrize("config, says", [("DIR", "is a directory"), ("nope.yaml", "config file not found")])
def test_data_config_missing_or_directory(docs: Path, tmp_path: Path, config: str, says: str) -> None:
    (tmp_path / "DIR").mkdir()
    r = run_flowlm("data", "filter", str(docs), "--config", str(tmp_path / config), tmpdir=tmp_path)
    fails(r, 2, f"--config {tmp_path / config}", says)


def test_data_config_duplicate_key(docs: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 1\nseed: 2\n")
    fails(run_flowlm("data", "filter", str(docs), "--config", str(cfg), tmpdir=tmp_path), 2, str(cfg),
          "duplicate key 'seed'")


@pytest.mark.parametrize("args, says", [(["--workers", "-3"], "--workers: must be >= 1"),
                                        (["--workers", "0"], "--workers: must be >= 1")])
def test_data_workers_must_be_positive(docs: Path, tmp_path: Path, args: list[str], says: str) -> None:
    r = run_flowlm("data", "filter", str(docs), *args, tmpdir=tmp_path)
    assert r.returncode == 2 and says in r.stderr and "internal error" not in r.stderr, r.stderr


def test_data_set_workers_zero_is_one_line(docs: Path, tmp_path: Path) -> None:
    fails(run_flowlm("data", "filter", str(docs), "--set", "workers=0", tmpdir=tmp_path), 2, "'workers'")


# --- 5, 6. output locations that are files or cannot be made --------------------------------------------------


def test_run_dir_that_is_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    r = run_flowlm("train", "tiny", "--stage", "corpus", "--run-dir", str(afile), tmpdir=tmp_path)
    fails(r, 2, f"--run-dir {afile}", "is a file")
    assert afile.read_text() == "keep me\n"


def test_run_dir_that_cannot_be_created(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    r = run_flowlm("train", "tiny", "--stage", "corpus", "--run-dir", str(afile / "sub"), tmpdir=tmp_path)
    fails(r, 1, f"--run-dir {afile / 'sub'}", "cannot create")


def test_data_out_that_is_a_file(docs: Path, tmp_path: Path) -> None:
    before = docs.read_bytes()
    fails(run_flowlm("data", "filter", str(docs), "-o", str(docs), tmpdir=tmp_path), 2, f"--out {docs}",
          "is a file")
    assert docs.read_bytes() == before


# --- 7. directories and undecodable files where a data file is expected ----------------------------------------


@pytest.mark.parametrize("name, content, says", [
    ("x.jsonl.gz", b"garbage\n", "not a valid gzip file"),
    ("x.jsonl.zst", b"garbage\n", "not a valid zstd file"),
    ("x.parquet", b"garbage\n", "not a valid parquet file"),
    ("t.jsonl.gz", gzip.compress(b'{"text": "a b c"}\n' * 200)[:-12], "not a valid gzip file"),
    ("t.jsonl.zst", zstandard.ZstdCompressor().compress(b'{"text": "a b c"}\n' * 200)[:-3], "truncated"),
], ids=["gzip", "zstd", "parquet", "truncated-gzip", "truncated-zstd"])
def test_data_undecodable_input_is_one_line(tmp_path: Path, name: str, content: bytes, says: str) -> None:
    bad = tmp_path / name
    bad.write_bytes(content)
    fails(run_flowlm("data", "filter", str(bad), tmpdir=tmp_path), 1, str(bad), says)


def test_train_objective_data_directory(tmp_path: Path) -> None:
    (tmp_path / "SOMEDIR").mkdir()
    (tmp_path / "init").mkdir()
    r = run_flowlm("train", "--objective", "sft", "--init", str(tmp_path / "init"), "--data",
                   str(tmp_path / "SOMEDIR"), "--run-dir", str(tmp_path / "rd"), tmpdir=tmp_path)
    fails(r, 2, f"--data {tmp_path / 'SOMEDIR'}", "is a directory")


def test_eval_jsonl_suite_directory(tmp_path: Path) -> None:
    (tmp_path / "EMPTYDIR").mkdir()
    (tmp_path / "model").mkdir()
    r = run_flowlm("eval", "--model", str(tmp_path / "model"), "--suite", "jsonl", "--file",
                   str(tmp_path / "EMPTYDIR"), tmpdir=tmp_path)
    fails(r, 1, str(tmp_path / "EMPTYDIR"), "is a directory")


def test_readers_name_directories_and_corrupt_files(tmp_path: Path) -> None:
    """The shared readers (no subprocess): strict JSONL, the corpus reader and the chat-file probe."""
    from flowlm.data.chat import is_chat_file
    from flowlm.data.docs import read_docs
    from flowlm.errors import FlowError
    from flowlm.jsonlines import read_json_objects

    (tmp_path / "d.jsonl").mkdir()
    (tmp_path / "x.jsonl.gz").write_bytes(b"garbage")
    cases = [(lambda: read_json_objects(tmp_path / "d.jsonl"), "is a directory, not a JSONL file"),
             (lambda: list(read_docs(tmp_path / "d.jsonl")), "is a directory"),
             (lambda: is_chat_file(tmp_path / "d.jsonl"), "is a directory"),
             (lambda: read_json_objects(tmp_path / "x.jsonl.gz"), "not a valid gzip file"),
             (lambda: is_chat_file(tmp_path / "x.jsonl.gz"), "not a valid gzip file")]
    for call, says in cases:
        with pytest.raises(FlowError, match=says):
            call()


# --- 8. run records that are not run records -------------------------------------------------------------------


@pytest.mark.parametrize("record, says", [
    ([], "top level is a JSON array"),
    ({"stages": 5}, "'stages' is a JSON number"),
    ({"stages": {"a": 5}}, "stage 'a'"),
    ({"stages": {"a": {"metrics": {"results": [1]}}}}, "stages.a.metrics.results"),
])
def test_report_on_a_malformed_record(tmp_path: Path, record: object, says: str) -> None:
    d = tmp_path / "D"
    d.mkdir()
    (d / "flow.json").write_text(json.dumps(record))
    fails(run_flowlm("report", str(d), tmpdir=tmp_path), 1, str(d / "flow.json"), "not a flowlm run record", says)
