"""`run_pipeline`: read -> filter -> exact / MinHash / substring dedup -> quality + upsampling (mix) ->
decontaminate, on any executor, with conservation-checked accounting written to `stats.json`.

Intermediate shards live in `out_dir/work/<NN_step>/part-XXXXX.jsonl`; the kept documents are
`out_dir/docs/part-XXXXX.jsonl`. Each shard task is recorded by a completion marker, so re-running
the same call after a crash redoes only unfinished shards. The markers are only trusted for the same
inputs and config: `work/fingerprint.json` records both (input paths with their content hash, or size +
mtime for files over `CONTENT_HASH_MAX`; the config without the executor settings; the benchmark and
quality files it names), and a call whose fingerprint differs discards `work/` and recomputes every
step, with a note on stderr.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Literal

import numpy as np
from pydantic import Field

from flowlm.atomic import atomic_write_json
from flowlm.config import Strict
from flowlm.data import shard_tasks
from flowlm.data.accounting import RunStats, StepStats
from flowlm.data.decontam import DecontamCfg
from flowlm.data.dedup.exact import ExactDedupCfg, find_exact_duplicates
from flowlm.data.dedup.minhash import MinHashCfg, band_edges, cluster, describe
from flowlm.data.dedup.substring import SubstringCfg
from flowlm.data.docs import JsonlWriter, expand_inputs
from flowlm.data.executor import Executor, make_executor
from flowlm.data.filters import FilterConfig
from flowlm.data.upsample import UpsampleCfg
from flowlm.errors import ConfigError, FlowError

FINGERPRINT = "fingerprint.json"  # in out_dir/work: the inputs and config the markers there belong to
CONTENT_HASH_MAX = 16 << 20  # input files up to this size are fingerprinted by content, larger by size + mtime
RUN_ONLY_KEYS = ("executor", "workers")  # settings that do not change what a run writes


class DedupCfg(Strict):
    exact: ExactDedupCfg | None = ExactDedupCfg()
    minhash: MinHashCfg | None = MinHashCfg()
    substring: SubstringCfg | None = SubstringCfg()


class QualityStepCfg(Strict):
    enabled: bool = True
    classifier: str | None = None  # a saved QualityClassifier (.npz); else trained here
    positive: tuple[str, ...] = ()  # document files of good examples
    negative: tuple[str, ...] = ()  # document files of bad examples (default: shuffled positives)
    n_examples: int = 400
    n_buckets: int = 20
    topic_key: str = "topic"


class MixCfg(Strict):
    """Share of the token budget per topic (default: each topic's natural share after dedup)."""

    weights: dict[str, float] | None = None


class DecontamStepCfg(Strict):
    benchmarks: tuple[str, ...] = ()  # benchmark files (jsonl / jsonl.gz / json); empty = step passes
    cfg: DecontamCfg = DecontamCfg()


class PipelineConfig(Strict):
    filters: FilterConfig = FilterConfig()
    dedup: DedupCfg = DedupCfg()
    quality: QualityStepCfg = QualityStepCfg()
    upsample: UpsampleCfg = UpsampleCfg()
    mix: MixCfg = MixCfg()
    decontam: DecontamStepCfg = DecontamStepCfg()
    executor: Literal["serial", "local", "ray"] = "local"
    workers: int = Field(2, ge=1)
    docs_per_shard: int = Field(1000, ge=1)
    write_excluded: bool = False
    seed: int = 0


def builtin_config(**overrides: Any) -> PipelineConfig:
    """Preset for flowlm's built-in corpus (stdlib code + docstrings + procedural math): prose
    heuristics and language ID judge only the docstring prose; code and templated math keep the
    length / compression / PII checks; MinHash keeps digits (math items differ only in numbers)."""
    from flowlm.data.filters import LangIdCfg, QualityCfg, RepetitionCfg

    prose = ("stdlib-docstrings",)
    base = PipelineConfig(
        filters=FilterConfig(quality=QualityCfg(sources=prose), repetition=RepetitionCfg(sources=prose),
                             langid=LangIdCfg(sources=prose)),
        dedup=DedupCfg(minhash=MinHashCfg(norm_numbers=False)))
    return base.model_copy(update=overrides) if overrides else base


@dataclass
class PipelineResult:
    out_dir: Path
    shards: list[Path]
    stats: RunStats
    stats_path: Path
    decontam_report: Path | None

    def iter_docs(self) -> Iterable[dict[str, Any]]:
        from flowlm.data.docs import read_jsonl

        for p in self.shards:
            yield from read_jsonl(p)


class _Run:
    """Holds paths, executor and stats while the stages run."""

    def __init__(self, out_dir: Path, cfg: PipelineConfig, executor: Executor) -> None:
        self.out, self.cfg, self.ex = out_dir, cfg, executor
        self.work = out_dir / "work"
        self.stats = RunStats()
        self.n_stage = 0
        executor.set_markers(self.work / "markers")

    def claim(self, inputs: list[Path], spooled: Collection[Path] = ()) -> None:
        """Make `work/` hold results of this call's inputs and config only.

        A rerun with the same fingerprint keeps the markers (resume); one with other inputs or config
        discards the earlier intermediate files, says so on stderr and recomputes every step.
        """
        new = run_fingerprint(self.cfg, inputs, self.out, spooled)
        path = self.work / FINGERPRINT
        old = _load_json(path)
        if old != new and (old is not None or (self.work / "markers").exists()):
            changed = [k for k in ("inputs", "config") if (old or {}).get(k) != new[k]]
            if (old or {}).get("config_files") != new["config_files"] and "config" not in changed:
                changed.append("files named in the config")
            why = f"the {' and '.join(changed)} changed since" if old is not None else "no fingerprint of"
            print(f"note: {self.out}: {why} the earlier run in this directory; recomputing every step "
                  "(its intermediate files are discarded)", file=sys.stderr)
            self._clear_work()
        atomic_write_json(path, new)

    def _clear_work(self) -> None:
        """Remove markers and intermediate shards; keep the documents spooled for this call (`00_input`)."""
        for child in self.work.iterdir():
            if child.name == "00_input":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def stage_dir(self, name: str) -> Path:
        self.n_stage += 1
        d = self.work / f"{self.n_stage:02d}_{name}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def excl(self, d: Path, i: int) -> str | None:
        return str(d / f"excluded-{i:05d}.jsonl") if self.cfg.write_excluded else None

    def merge(self, name: str, results: list[dict[str, Any]]) -> None:
        st = self.stats.step(name)
        for r in results:
            st.merge(StepStats.from_dict(name, r))

    def per_shard(self, name: str, shards: list[Path], fn: Any, extra: list[tuple]) -> list[Path]:
        d = self.stage_dir(name)
        outs = [d / f"part-{i:05d}.jsonl" for i in range(len(shards))]
        tasks = [(f"{i:05d}", fn, (str(p), str(o), self.excl(d, i), *extra[i]))
                 for i, (p, o) in enumerate(zip(shards, outs))]
        self.merge(name, self.ex.map(name, tasks))
        return outs


def _stage_inputs(run: _Run, inputs: Any) -> list[Path]:
    """Paths are used as they are; an iterable of docs is spooled to jsonl shards first."""
    if isinstance(inputs, (str, Path)) or (isinstance(inputs, (list, tuple)) and inputs
                                           and isinstance(inputs[0], (str, Path))):
        return expand_inputs([inputs] if isinstance(inputs, (str, Path)) else inputs)
    d = run.work / "00_input"
    if d.exists():  # shards of an earlier call's documents
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    w: JsonlWriter | None = None
    for i, doc in enumerate(inputs):
        if i % run.cfg.docs_per_shard == 0:
            if w:
                w.close()
            paths.append(d / f"part-{len(paths):05d}.jsonl")
            w = JsonlWriter(paths[-1])
        assert w is not None
        # write whatever we were given; malformed records are quarantined by the read step
        w._fh.write((json.dumps(doc, ensure_ascii=False, default=str) + "\n").encode())
    if w:
        w.close()
    return paths


def run_fingerprint(cfg: PipelineConfig, inputs: list[Path], out: Path,
                    spooled: Collection[Path] = ()) -> dict[str, Any]:
    """What the results in `out/work` depend on: the config (less the executor settings), every input file
    and every file the config names for the steps that run (benchmarks, quality classifier / examples)."""
    conf = json.loads(cfg.model_dump_json())
    for key in RUN_ONLY_KEYS:
        conf.pop(key, None)
    spooled = {Path(p) for p in spooled}
    return {"config": conf, "inputs": [_file_key(Path(p), out, spooled) for p in inputs],
            "config_files": [_file_key(p, out, set()) for p in _config_files(cfg)]}


def _config_files(cfg: PipelineConfig) -> list[Path]:
    """The files the enabled steps read besides the inputs (a path that is missing stays, as named)."""
    named = list(cfg.decontam.benchmarks)
    if cfg.quality.enabled and cfg.upsample.mode != "none":
        named += [*([cfg.quality.classifier] if cfg.quality.classifier else []), *cfg.quality.positive,
                  *cfg.quality.negative]
    files: list[Path] = []
    for name in named:
        try:
            files.extend(expand_inputs([name]))
        except FlowError:  # the step that reads it names the problem
            files.append(Path(name))
    return files


def _file_key(path: Path, out: Path, spooled: Collection[Path]) -> dict[str, Any]:
    """A file's identity: its name and content hash (spooled, in the run dir, or small), else size + mtime.

    A file spooled for this call only (stdin) is named by content alone; a special file (a pipe) never
    matches an earlier run.
    """
    inside = path.resolve().is_relative_to(out.resolve())
    name = f"<spooled>/{path.name}" if path in spooled else \
        str(path.resolve().relative_to(out.resolve())) if inside else str(path.resolve())
    try:
        st = path.stat()
    except OSError:
        return {"path": name, "missing": True}
    if not stat.S_ISREG(st.st_mode):
        return {"path": name, "special": time.time_ns()}
    if path in spooled or inside or st.st_size <= CONTENT_HASH_MAX:
        return {"path": name, "sha256": _sha256_file(path)}
    return {"path": name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_json(path: Path) -> Any:
    """The JSON in `path`, {} when it is unreadable (never equal to a fingerprint), None when it is absent."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read(run: _Run, inputs: list[Path]) -> list[Path]:
    d = run.stage_dir("read")
    outs = [d / f"part-{i:05d}.jsonl" for i in range(len(inputs))]
    res = run.ex.map("read", [(f"{i:05d}", shard_tasks.read_task, (str(p), str(o)))
                              for i, (p, o) in enumerate(zip(inputs, outs))])
    run.merge("read", [r["stats"] for r in res])
    for r in res:
        run.stats.quarantine.extend(r["quarantine"])
    return outs


def _exact(run: _Run, shards: list[Path], cfg: ExactDedupCfg) -> list[Path]:
    removed = find_exact_duplicates((((s, i), d) for s, i, d in shard_tasks.iter_shard_docs(shards)), cfg)
    per = [{str(i): f"{s2}:{i2}" for (s, i), (s2, i2) in removed.items() if s == k}
           for k in range(len(shards))]
    return run.per_shard("exact", shards, shard_tasks.drop_task, [("exact", p) for p in per])


def _minhash(run: _Run, shards: list[Path], cfg: MinHashCfg) -> list[Path]:
    print(describe(cfg), file=sys.stderr)
    work = run.work / "minhash"
    cj = cfg.model_dump_json()
    run.ex.map("minhash_sig", [(f"{s:05d}", shard_tasks.minhash_signature_task, (str(p), s, str(work), cj))
                               for s, p in enumerate(shards)])
    run.ex.map("minhash_band", [(f"{b:03d}", band_edges, (b, str(work), cfg.max_pairs_per_run))
                                for b in range(cfg.bands)])
    res = cluster(work, cfg)
    print(f"minhash: {res['info']}", file=sys.stderr)
    per: list[dict[str, str]] = [{} for _ in shards]
    for doc_id, keep in res["removed"].items():
        per[doc_id >> 32][str(doc_id & 0xFFFFFFFF)] = f"{keep >> 32}:{keep & 0xFFFFFFFF}"
    return run.per_shard("minhash", shards, shard_tasks.drop_task, [("minhash", p) for p in per])


def _quality(run: _Run, shards: list[Path]) -> list[Path]:
    from flowlm.data.quality import percentile_buckets
    from flowlm.data.upsample import copies, repeat_factors

    qc, uc = run.cfg.quality, run.cfg.upsample
    clf_path = Path(qc.classifier) if qc.classifier else run.work / "quality_classifier.npz"
    if not qc.classifier:
        _train_classifier(run, shards, clf_path)
    res = run.ex.map("quality_score", [(f"{s:05d}", shard_tasks.score_task, (str(p), str(clf_path),
                                                                             qc.topic_key))
                                       for s, p in enumerate(shards)])
    scores = np.concatenate([np.asarray(r["scores"], float) for r in res]) if res else np.zeros(0)
    topics = [t for r in res for t in r["topics"]]
    tokens = np.concatenate([np.asarray(r["tokens"], float) for r in res]) if res else np.zeros(0)
    ids = [i for r in res for i in r["ids"]]
    pct, _ = percentile_buckets(scores, topics, qc.n_buckets)
    factors = np.zeros_like(pct)
    for topic, budget, idx in _topic_budgets(run.cfg, topics, tokens):
        factors[idx] = repeat_factors(pct[idx], tokens[idx], budget, uc)
    n = copies(factors, ids, run.cfg.seed)
    bounds = np.cumsum([0] + [len(r["ids"]) for r in res])
    extra = [(n[bounds[s]:bounds[s + 1]].tolist(), pct[bounds[s]:bounds[s + 1]].tolist())
             for s in range(len(shards))]
    return run.per_shard("upsample", shards, shard_tasks.upsample_task, extra)


def _topic_budgets(cfg: PipelineConfig, topics: list[str], tokens: np.ndarray):
    """Yield (topic, token budget, doc indices): budget = total * topic weight."""
    t_arr = np.asarray(topics)
    total = cfg.upsample.budget_tokens or cfg.upsample.budget_ratio * float(tokens.sum())
    names = sorted(set(topics))
    w = cfg.mix.weights or {t: float(tokens[t_arr == t].sum()) for t in names}
    unknown = set(w) - set(names)
    if unknown:
        raise ConfigError(f"mix.weights: unknown topic(s) {sorted(unknown)}; present: {names}")
    z = sum(w.get(t, 0.0) for t in names) or 1.0
    for t in names:
        yield t, total * w.get(t, 0.0) / z, np.nonzero(t_arr == t)[0]


def _train_classifier(run: _Run, shards: list[Path], path: Path) -> None:
    from flowlm.data.docs import read_docs
    from flowlm.data.quality import QualityClassifier, self_supervised_examples

    qc = run.cfg.quality
    if qc.positive:
        pos = [d["text"] for p in expand_inputs(qc.positive) for d in read_docs(p)]
        neg = [d["text"] for p in expand_inputs(qc.negative) for d in read_docs(p)] if qc.negative \
            else self_supervised_examples(pos, qc.n_examples, run.cfg.seed)[1]
    else:
        texts = [d["text"] for _, _, d in shard_tasks.iter_shard_docs(shards)]
        pos, neg = self_supervised_examples(texts, qc.n_examples, run.cfg.seed) if texts else ([], [])
    clf = QualityClassifier()
    if pos and neg:
        clf.fit(pos, neg, seed=run.cfg.seed)
    clf.save(path)


def _decontam(run: _Run, shards: list[Path]) -> tuple[list[Path], Path]:
    dc = run.cfg.decontam
    d = run.stage_dir("decontam")
    outs = [d / f"part-{i:05d}.jsonl" for i in range(len(shards))]
    reps = [d / f"report-{i:05d}.jsonl" for i in range(len(shards))]
    cj = dc.cfg.model_dump_json()
    tasks = [(f"{i:05d}", shard_tasks.decontam_task, (str(p), str(o), run.excl(d, i), str(r),
                                                      list(dc.benchmarks), cj))
             for i, (p, o, r) in enumerate(zip(shards, outs, reps))]
    run.merge("decontam", run.ex.map("decontam", tasks))
    report = run.out / "decontam_report.jsonl"
    with open(report, "w") as fh:
        for r in reps:
            fh.write(r.read_text())
    return outs, report


def run_pipeline(docs: Iterable[dict[str, Any]] | str | Path | list[str | Path], out_dir: str | Path,
                 cfg: PipelineConfig | None = None, executor: Executor | None = None, *,
                 spooled: Collection[str | Path] = ()) -> PipelineResult:
    """Run every enabled stage; raise FlowError if accounting does not conserve documents/tokens.

    `spooled`: input files written for this call only (stdin copied to a temporary file); they are
    recognised on a rerun by their content, not by their path.
    """
    from flowlm.data.decontam import load_benchmark

    cfg = cfg or PipelineConfig()
    for bench in cfg.decontam.benchmarks:  # a bad benchmark file stops the run before any work
        load_benchmark(bench)
    out = _make_out_dir(Path(out_dir))
    own = executor is None
    ex = executor or make_executor(cfg.executor, cfg.workers)
    run = _Run(out, cfg, ex)
    try:
        inputs = _stage_inputs(run, docs)
        run.claim(inputs, [Path(p) for p in spooled])
        shards = _read(run, inputs)
        fj = cfg.filters.model_dump_json()
        shards = run.per_shard("filter", shards, shard_tasks.filter_task, [(fj,)] * len(shards))
        if cfg.dedup.exact is not None:
            shards = _exact(run, shards, cfg.dedup.exact)
        if cfg.dedup.minhash is not None:
            shards = _minhash(run, shards, cfg.dedup.minhash)
        if cfg.dedup.substring is not None:
            sj = cfg.dedup.substring.model_dump_json()
            shards = run.per_shard("substring", shards, shard_tasks.substring_task, [(sj,)] * len(shards))
        if cfg.quality.enabled and cfg.upsample.mode != "none":
            shards = _quality(run, shards)
        report = None
        if cfg.decontam.benchmarks:
            shards, report = _decontam(run, shards)
    finally:
        if own:
            ex.close()
    final = _publish(out, shards)
    if report is None and (out / "decontam_report.jsonl").exists():  # an earlier call's, not this one's
        (out / "decontam_report.jsonl").unlink()
    run.stats.check()
    stats_path = out / "stats.json"
    doc = run.stats.to_dict()
    doc["config"] = json.loads(cfg.model_dump_json())
    stats_path.write_text(json.dumps(doc, indent=2))
    return PipelineResult(out, final, run.stats, stats_path, report)


def _make_out_dir(out: Path) -> Path:
    """Create the output directory; a file in the way, or a path that cannot be made, is a one-line FlowError."""
    from flowlm.atomic import make_dir

    return make_dir(out, f"output directory {out}")


def _publish(out: Path, shards: list[Path]) -> list[Path]:
    """Copy the last stage's shards to out/docs (a fresh directory each run)."""
    d = out / "docs"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    final = []
    for i, p in enumerate(shards):
        dst = d / f"part-{i:05d}.jsonl"
        shutil.copyfile(p, dst)
        final.append(dst)
    return final
