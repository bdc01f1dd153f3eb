"""Every shell command shown in README.md and docs/*.md is executed here at a smoke size (issue #17).

`documented_commands()` reads every fenced block of README.md and docs/*.md that holds shell commands
(```bash / sh / shell / console blocks, and untyped blocks whose first line starts with a command word
such as `flowlm`, `torchrun`, `python`, `pip`), joins continued lines (a trailing backslash, or an
indented line after a command, as in a usage synopsis), drops comments and collapses spaces. `TABLE` maps
each such command, by that exact text, to how it runs here: the same command with smoke-size additions
(dotted overrides such as `stages.pretrain.steps=4`, `--max-items 2`, `--max-new-tokens 16`), the
placeholders (`CKPT`, `/data/...`, `/shared/...`) filled with tiny checkpoints and files made in a
temporary workspace, run through the installed entry points (`flowlm`, `torchrun`, `python` beside this
interpreter) in a subprocess with bash, torchrun commands with 2 CPU processes (gloo). A command in the
docs but not in the table fails, and so does a table entry no longer in the docs: a new docs command
needs a row here.

Commands that cannot run as written on this machine carry `weaker`: why, and what is checked instead
(`pip install` of the package: the installed distributions satisfy the command's requirements; the
test suite: collected, not run; 8 GPUs: 2 CPU processes; two nodes: two single-process "nodes" on
localhost; Slurm: stand-ins for `srun` / `scontrol` that start one task per node on this machine).

Cost: one shared tiny run (`flowlm run` at smoke size, then tiny-post's `sft_data` and `sft` in the same
directory, as `flowlm run tiny-post --run-dir runs/tiny` would) is built once per module; every command
then runs in its own directory (symlinks to the shared runs, copies of the input files), two at a time
(the machine has 2 cores): about 185 CPU-seconds in all, 4 minutes of wall time measured on 2 cores
that other jobs kept busy (load 5-9), less on idle ones. `timings.txt` in the workspace lists each
command's time.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# --- extracting the commands ---------------------------------------------------------------------------------

SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
COMMAND_WORDS = {"flowlm", "torchrun", "python", "python3", "pip", "pip3", "uv", "cat", "srun", "sbatch", "bash",
                 "sh", "export", "cd", "git", "curl", "wget", "docker", "make"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")


def shell_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """(first line number, language, lines) of every fenced block."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start, body = m.group(1), m.group(2).lower(), i + 2, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence[:3]):
            body.append(lines[i])
            i += 1
        out.append((start, lang, body))
        i += 1
    return out


def _first_word(line: str) -> str:
    words = line.strip().removeprefix("$ ").split()
    return words[0] if words else ""


def block_commands(lang: str, body: list[str]) -> list[tuple[int, str]]:
    """(line offset, command) of the shell commands in one block; [] when the block is not shell."""
    content = [ln for ln in body if ln.strip() and not ln.strip().startswith("#")]
    if lang not in SHELL_LANGS and not (lang == "" and content and _first_word(content[0]) in COMMAND_WORDS):
        return []
    cmds: list[tuple[int, str]] = []
    current: list[str] | None = None
    continued = False
    for k, raw in enumerate(body):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not continued):
            current, continued = None, False
            continue
        if lang == "console" and not continued and not stripped.startswith("$ "):
            current = None
            continue  # output lines of a console session
        stripped = stripped.removeprefix("$ ")
        stripped = re.sub(r"\s+#\s.*$", "", stripped)  # a trailing comment
        joins = current is not None and (continued or raw[:1].isspace())
        continued = stripped.endswith("\\")
        piece = stripped.removesuffix("\\").strip()
        if joins:
            current.append(piece)
            cmds[-1] = (cmds[-1][0], " ".join(current))
        else:
            current = [piece]
            cmds.append((k, piece))
    return [(k, " ".join(c.split())) for k, c in cmds]


def documented_commands() -> dict[str, list[str]]:
    """Every documented shell command -> where it is shown (`FILE:LINE`)."""
    found: dict[str, list[str]] = {}
    for path in DOC_FILES:
        for start, lang, body in shell_blocks(path.read_text()):
            for k, cmd in block_commands(lang, body):
                found.setdefault(cmd, []).append(f"{path.relative_to(ROOT)}:{start + k}")
    return found


# --- smoke size ----------------------------------------------------------------------------------------------

# The tiny recipe shrunk to seconds per stage (as tests/flow does): a 2-layer d=64 model, small corpora,
# a few steps per training stage, few BPB items. Appended after a command's own overrides, so they win.
SMOKE = [
    "model.overrides={hidden_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, intermediate_size: 128, sliding_window: 32}",
    "stages.corpus.pretrain_bytes=80000", "stages.corpus.midtrain_bytes=30000", "stages.corpus.long_docs=4",
    "stages.tokenizer.vocab_size=512", "stages.tokenizer.train_bytes=80000",
    "stages.pretrain.steps=4", "stages.pretrain.seq_len=128", "stages.pretrain.batch_size=2",
    "stages.pretrain.checkpoint_every=2",
    "stages.midtrain.steps=2", "stages.midtrain.seq_len=128", "stages.midtrain.batch_size=2",
    "stages.midtrain.checkpoint_every=2",
    "stages.midtrain_2.steps=2", "stages.midtrain_2.seq_len=128", "stages.midtrain_2.batch_size=2",
    "stages.midtrain_2.checkpoint_every=2",
    "stages.long_context.steps=2", "stages.long_context.seq_len=256", "stages.long_context.batch_size=1",
    "stages.long_context.checkpoint_every=2", "stages.long_context.yarn.original_max_seq_len=64",
    "eval.max_items=4", "eval.heldout_docs=2", "threads=1",
]
# tiny-post's first two stages at smoke size (16 prompts, one SFT step)
POST_SMOKE = ["stages.sft_data.n_prompts=16", "stages.sft.seq_len=256", "stages.sft.batch_size=8"]
GEN = "--max-items 2 --max-new-tokens 16"  # generation evals: 2 items per suite, 16 new tokens

# `my_recipe.yaml` of docs/scale-out.md: a user's recipe; here the base flow's first stages at smoke size
MY_RECIPE = """\
name: my_recipe
threads: 1
model:
  preset: tiny
  overrides: {hidden_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, intermediate_size: 128, sliding_window: 32}
eval: {max_items: 4, heldout_docs: 2, tasks: [prose]}
stages:
  corpus: {pretrain_bytes: 60000, midtrain_bytes: 20000, long_docs: 2, curate: null}
  tokenizer: {vocab_size: 512, train_bytes: 60000}
  pretrain: {data: pretrain, steps: 3, seq_len: 128, batch_size: 4, checkpoint_every: 3}
"""

FAKE_SRUN = """\
#!/bin/bash
# test stand-in for Slurm's srun: one task per node (SLURM_NNODES), all on this machine
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""
FAKE_SCONTROL = """\
#!/bin/bash
# test stand-in for `scontrol show hostnames LIST`: every node is this machine
[ "$1 $2" = "show hostnames" ] && printf '127.0.0.1\\n127.0.0.1\\n'
"""


def write_inputs(ws: Path) -> None:
    """The input files the documented commands name, small, under ws/inputs (copied into each command's
    directory), the benchmark files under ws/data (for `/data/...`), and the Slurm stand-ins."""
    inp = ws / "inputs"
    inp.mkdir(parents=True)

    def jsonl(path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    qa = [("What is 7 + 5?", "7 plus 5 is 12."), ("Name a primary color.", "Red is a primary color."),
          ("What is 9 * 3?", "9 times 3 is 27."), ("Spell 'cat' backwards.", "tac")]
    jsonl(inp / "chat.jsonl", [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                               for q, a in qa * 3])
    jsonl(inp / "pairs.jsonl", [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": a}],
                                 "rejected": [{"role": "assistant", "content": "I don't know."}]} for q, a in qa * 3])
    jsonl(inp / "prompts.jsonl", [
        {"prompt": "Compute 17 + 25.", "dataset": "math", "ground_truth": "42"},
        {"prompt": "What is 6 times 7?", "dataset": "math", "ground_truth": "42"},
        {"prompt": "Solve for x: 2x + 3 = 11.", "dataset": "math", "ground_truth": "4"},
        {"messages": [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}],
         "dataset": "gsm8k", "ground_truth": "#### 7"}])
    jsonl(inp / "rows.jsonl", [
        {"id": 1, "dataset": "math", "ground_truth": "4", "completion": "\\boxed{4}"},
        {"id": 2, "dataset": "gsm8k", "ground_truth": "#### 5", "completion": "#### 6"},
        {"id": 3, "dataset": "math", "ground_truth": "0.5", "completion": "<think>half</think> The answer is \\boxed{\\frac12}."}])
    jsonl(inp / "toolsets.jsonl", [
        {"id": "weather", "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]},
        {"id": "xlam", "tools": json.dumps([{"name": "search", "description": "Find items",
                                              "parameters": {"query": {"type": "str"}}}])}])
    jsonl(inp / "in.jsonl", [{"prompt": "Once upon a time"}, {"messages": [{"role": "user", "content": "What is 2+2?"}]}])
    gsm8k = [{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
             {"question": "A box holds 6 eggs. How many eggs are in 2 boxes?", "answer": "6 * 2 = <<6*2=12>>12\n#### 12"}]
    jsonl(inp / "gsm8k_test.jsonl", gsm8k)
    (inp / "my_recipe.yaml").write_text(MY_RECIPE)
    jsonl(ws / "data" / "gsm8k" / "test.jsonl", gsm8k)
    with gzip.open(ws / "data" / "gsm8k" / "train.jsonl.gz", "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in gsm8k))
    jsonl(ws / "data" / "math500" / "test.jsonl", [
        {"problem": "What is $1+1$?", "solution": "$1+1=\\boxed{2}$", "answer": "2", "unique_id": "test/a/1.json"},
        {"problem": "Simplify $\\frac{4}{8}$.", "solution": "$\\boxed{\\frac12}$", "answer": "\\frac{1}{2}", "unique_id": "test/a/2.json"}])
    (ws / "data" / "humaneval").mkdir(parents=True)
    with gzip.open(ws / "data" / "humaneval" / "HumanEval.jsonl.gz", "wt") as fh:
        for i, (fn, body, test) in enumerate([("double", "return 2 * x", "assert candidate(2) == 4"),
                                              ("inc", "return x + 1", "assert candidate(1) == 2")]):
            fh.write(json.dumps({"task_id": f"HumanEval/{i}", "prompt": f'def {fn}(x):\n    """{fn} x."""\n',
                                 "entry_point": fn, "canonical_solution": f"    {body}\n",
                                 "test": f"def check(candidate):\n    {test}\n"}) + "\n")
    fake = ws / "fakebin"
    fake.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)


# --- results and checks --------------------------------------------------------------------------------------

@dataclass
class Result:
    cmd: str
    cwd: Path
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    not_run: str = ""  # why it did not run (a setup step it needs failed)
    env: dict[str, str] = field(default_factory=dict)

    def tail(self) -> str:
        return f"$ {self.cmd}\n(cwd {self.cwd}, rc {self.rc}, {self.seconds:.1f} s)\n--- stderr ---\n{self.stderr[-3000:]}"


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "flow.json").read_text())


def stages_done(run_dir: Path, names: list[str]) -> None:
    st = record(run_dir)["stages"]
    assert [n for n in names if st.get(n, {}).get("status") != "done"] == [], {n: s.get("status") for n, s in st.items()}


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def requirement_problems(spec: str) -> list[str]:
    """`spec` (a pip requirement) against the installed distributions; the package's own extras recursively."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    req = Requirement(spec)
    if canonicalize_name(req.name) != "flowlm":
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            return [f"{spec}: not installed"]
        return [] if req.specifier.contains(have, prereleases=True) else [f"{spec}: have {have}"]
    problems, extras, seen = [], set(req.extras), set()
    while extras - seen:
        extra = min(extras - seen)
        seen.add(extra)
        for line in md.requires("flowlm") or []:
            dep = Requirement(line)
            if dep.marker is not None and not dep.marker.evaluate({"extra": extra}):
                continue
            if canonicalize_name(dep.name) == "flowlm":
                extras |= set(dep.extras)
            else:
                problems += requirement_problems(str(dep.name) + str(dep.specifier))
    return problems


def check_pip_install(*specs: str) -> None:
    """`pip install torch==2.13.0 && pip install -e .[extras]`, checked: torch satisfies the pin, flowlm is
    this checkout installed in development mode, every requirement of the extras is installed."""
    import importlib.metadata as md

    import flowlm

    problems = [p for s in specs for p in requirement_problems(s)]
    assert not problems, problems
    assert Path(flowlm.__file__).resolve().is_relative_to(ROOT / "src"), f"flowlm imported from {flowlm.__file__}"
    direct = json.loads(md.distribution("flowlm").read_text("direct_url.json") or "{}")
    assert direct.get("dir_info", {}).get("editable"), f"flowlm is not an editable install: {direct}"


def check_options_exist(synopsis: str, verb: list[str]) -> None:
    """Every `--option` / `-x` a usage synopsis names is an option of that verb's parser."""
    from flowlm.cli import build_parser

    parser = build_parser()
    for name in verb:
        parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
    known = {s for a in parser._actions for s in a.option_strings}
    named = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", synopsis))
    assert named <= known, f"`flowlm {' '.join(verb)}` has no option(s) {sorted(named - known)}"


def check_run(run_dir: Path, names: list[str]) -> Callable[[Result], None]:
    return lambda r: stages_done(r.cwd / run_dir, names)


BASE_STAGES = ["corpus", "tokenizer", "pretrain", "midtrain", "midtrain_2", "soup", "long_context"]


def _check_base(r: Result) -> None:
    check_pip_install("torch==2.13.0")
    stages_done(r.cwd / "runs" / "tiny", BASE_STAGES)
    assert "BPB by stage" in r.stdout
    page = (r.cwd / "runs" / "tiny" / "report.html").read_text()  # the README: the run ends with its web page
    assert all(f'id="stage-{s}"' in page for s in BASE_STAGES) and "<h2>BPB by stage</h2>" in page


def _check_longer(r: Result) -> None:
    rec = record(r.cwd / "runs" / "longer")
    stages_done(r.cwd / "runs" / "longer", BASE_STAGES)
    assert rec["recipe"]["overrides"][0] == "stages.pretrain.steps=200"
    assert rec["stages"]["pretrain"]["metrics"]["steps"] == 4  # the smoke override, given after it, wins


def _check_bpb(r: Result) -> None:
    out = json.loads(r.stdout)
    assert {"bpb", "heldout_loss"} <= set(out) and all(0 < v < 20 for v in out.values()), out


def _check_suites(*suites: str, out: str | None = None) -> Callable[[Result], None]:
    def check(r: Result) -> None:
        doc = json.loads((r.cwd / out).read_text() if out else r.stdout)
        assert set(doc["results"]) == set(suites), doc["results"].keys()
        assert all(res["items"] == 2 for res in doc["results"].values())
    return check


def _check_verdicts(path: str | None) -> Callable[[Result], None]:
    def check(r: Result) -> None:
        rows = jsonl_rows(r.cwd / path) if path else [json.loads(x) for x in r.stdout.splitlines()]
        assert [(v["id"], v["score"]) for v in rows] == [(1, 1.0), (2, 0.0), (3, 1.0)], rows
    return check


def _check_model(run_dir: str, stage: str) -> Callable[[Result], None]:
    def check(r: Result) -> None:
        stages_done(r.cwd / run_dir, [stage])
        assert (r.cwd / run_dir / stage / "model" / "model.safetensors").is_file()
    return check


def _check_post(out: str, kind: str, prompts: int) -> Callable[[Result], None]:
    def check(r: Result) -> None:
        assert (r.cwd / out).is_file() if out else True
        last = r.stderr.strip().splitlines()[-1]
        assert re.fullmatch(rf"post (coldstart|pairs): \d+ {kind} from {prompts} prompts( -> {out})?", last), last
    return check


def _check_multiturn(r: Result) -> None:
    assert (r.cwd / "mt.jsonl").is_file()
    last = r.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"post multiturn: \d+ rows from 4 prompts -> mt.jsonl", last), last
    assert re.search(r"prompts +in +4 ", r.stderr), r.stderr  # every prompt is kept or dropped by reason


def _check_simfc(r: Result) -> None:
    assert (r.cwd / "fc.jsonl").is_file()
    last = r.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"post simfc: \d+ conversations from 2 tool sets -> fc.jsonl", last), last
    assert re.search(r"conversations in +4 ", r.stderr), r.stderr  # every conversation started is accounted for


def _check_generate(r: Result) -> None:
    rows = jsonl_rows(r.cwd / "out.jsonl")
    assert len(rows) == 2, rows


def _check_pytest_collects(r: Result) -> None:
    check_pip_install("torch==2.13.0", "flowlm[dev]")
    last = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ tests? collected in \S+.*", last), r.stdout[-1000:]


def _check_1b(r: Result) -> None:
    st = record(r.cwd / "runs" / "my_recipe")["stages"]
    assert all(s["status"] == "done" for s in st.values()), st
    assert st["pretrain"]["config"]["precision"] == "bf16"
    assert record(r.cwd / "runs" / "my_recipe")["recipe"]["config"]["model"]["preset"] == "1b"


def _check_exp1(r: Result) -> None:
    stages_done(Path(r.env["W"]) / "shared" / "runs" / "exp1", ["corpus", "tokenizer", "pretrain"])


def _check_skips_pretrain(r: Result) -> None:
    assert "[skip] pretrain: unchanged" in r.stderr, r.stderr[-2000:]
    stages_done(r.cwd / "runs" / "tiny", ["pretrain"])


def _check_report(r: Result) -> None:
    assert "BPB by stage" in r.stdout and "long_context" in r.stdout, r.stdout[-2000:]


def _check_judge_pairs(r: Result) -> None:
    pairs = [json.loads(x) for x in r.stdout.splitlines()]
    assert pairs and all(p["source"] == "judge" and not p["thinking"] for p in pairs)


def _check_rl_filter(r: Result) -> None:
    check_options_exist(RL_SYNOPSIS, ["rl", "filter"])
    assert (r.cwd / "kept.jsonl").is_file()


def _check_gsm8k_rows(out: str) -> Callable[[Result], None]:
    def check(r: Result) -> None:
        rows = jsonl_rows(r.cwd / out)
        assert [row["id"] for row in rows] == ["gsm8k-0", "gsm8k-1"] and all(row["dataset"] == "gsm8k" for row in rows)
        if out == "gsm8k_hard.jsonl":  # the filter's column
            assert all("pass_rate" in row for row in rows)
    return check


def _check_generate_synopsis(r: Result) -> None:
    check_options_exist(GEN_SYNOPSIS, ["generate"])
    rows = jsonl_rows(r.cwd / "out.jsonl")
    assert len(rows) == 2, rows


def _check_verify_synopsis(r: Result) -> None:
    check_options_exist(VERIFY_SYNOPSIS, ["verify"])
    _check_verdicts("verdicts.jsonl")(r)


def _check_slurm(r: Result) -> None:
    _check_exp1(r)
    for name in ("corpus", "tokenizer", "pretrain"):  # the rerun of a finished run skips every stage
        assert f"[skip] {name}" in r.stderr, r.stderr[-2000:]


def _check_ablate(r: Result) -> None:
    result = json.loads((r.cwd / "runs" / "ablate-midtrain" / "ablation.json").read_text())
    assert list(result["arms"]) == ["base", "lr_high", "seed2"]
    shared = ["corpus", "tokenizer", "pretrain", "midtrain_2"]  # what an override of midtrain leaves alone
    assert result["shared"] == {"lr_high": shared, "seed2": shared}, result["shared"]
    rows = {row["key"]: row for row in result["rows"]}
    assert rows["pretrain/final_loss"]["delta"] == {"lr_high": 0.0, "seed2": 0.0}
    assert rows["midtrain/final_loss"]["delta"]["lr_high"] != 0.0


def _check_tools(r: Result) -> None:
    rows = jsonl_rows(r.cwd / "tools.jsonl")
    comps = [c for row in rows for c in row["completions"]]
    assert len(rows) == 4 and len(comps) == 4, rows
    assert all(c["trajectory"] and len(c["tool_mask"]) == len(c["tokens"]) for c in comps), comps
    assert "4/4 requests done" in r.stderr and "tool call(s) run" in r.stderr


def _check_trace_text(r: Result) -> None:
    trace = json.loads(r.stdout)["trace"]
    assert trace["spans"] and trace["match_coverage"] > 0, trace  # the SFT rows hold steps of this form
    assert "sft: sft_data/store" in r.stderr and "pretrain: tokenizer/stores/pretrain" in r.stderr, r.stderr[-2000:]


def _check_traced_rows(r: Result) -> None:
    rows = jsonl_rows(r.cwd / "traced.jsonl")
    assert len(rows) == 4 and all(len(row["trace"]) == len(row["completions"]) for row in rows), rows


def _check_trace_store(r: Result) -> None:
    trace = json.loads(r.stdout)["trace"]
    assert trace["docs"] and all(d["store"] == "runs/tiny/tokenizer/stores/pretrain" for d in trace["docs"]), trace


# --- the table -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Smoke:
    run: str
    """The shell line run (bash, in the command's own directory). `{SMOKE}`, `{GEN}`, `{W}` (the
    workspace), `{port}` (a free port) are filled in."""
    shrunk: str = ""
    """What differs from the documented command, and why."""
    weaker: str = ""
    """Set when the command cannot run as written on this machine: why, and what is checked instead."""
    after: tuple[str, ...] = ("base",)
    """Setup steps or table keys that must finish first."""
    check: Callable[[Result], None] | None = None
    together: str = ""
    """Entries with the same `together` name start at the same time (the nodes of one multi-node run)."""
    same_source: bool = False
    """It relies on a stage fingerprint made earlier in the module (a skip): an edit of the package source
    while the module runs moves the fingerprint (the code hash is part of it), which is no docs bug."""
    env: dict[str, str] = field(default_factory=dict)


README_TORCHRUN = "torchrun --nproc_per_node 2 -m flowlm.cli train tiny --stage corpus --stage tokenizer --stage pretrain --run-dir runs/ddp"
COLDSTART_BUILTIN = "flowlm post coldstart --builtin 200 --teacher procedural --set teacher.error_rate=0.3 --out sft.jsonl"
NODE = ("torchrun --nnodes 2 --node_rank {rank} --nproc_per_node 8 --master_addr node0 --master_port 29500 "
        "-m flowlm.cli run my_recipe.yaml --run-dir /shared/runs/exp1")
SLURM = ("srun bash -c 'torchrun --nnodes $SLURM_NNODES --node_rank $SLURM_NODEID --nproc_per_node 8 "
         "--master_addr $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1) --master_port 29500 "
         "-m flowlm.cli run my_recipe.yaml --run-dir /shared/runs/exp1'")
GEN_SYNOPSIS = ("flowlm generate --model CKPT [--file in.jsonl | -] [--out out.jsonl] [--backend native|vllm] [--n N] "
                "[--temperature T] [--top-p P] [--top-k K] [--min-p P] [--max-new-tokens N] [--stop S]... "
                "[--stop-token-id ID]... [--seed S] [--max-slots N] [--no-thinking] [--logprobs raw|tempered] "
                "[--no-progress]")
RL_SYNOPSIS = ("flowlm rl filter --model CKPT --file prompts.jsonl [-k 8] [--max-pass-rate 0.625] [--out kept.jsonl] "
               "[--set temperature=0.7 --set max_new_tokens=512 --set min_pass_rate=0.1 --set verify_workers=4]")
GSM8K_PROMPTS = "flowlm rl prompts --suite gsm8k=/data/gsm8k/train.jsonl.gz --out gsm8k_rl.jsonl"
GSM8K_FILTER = "flowlm rl filter --model CKPT --file gsm8k_rl.jsonl --out gsm8k_hard.jsonl"
GSM8K_GRPO = "flowlm train --objective grpo --init CKPT --data gsm8k_hard.jsonl stages.grpo.steps=100"
VERIFY_SYNOPSIS = "flowlm verify [--file rows.jsonl | -] [--out verdicts.jsonl] [--name NAME] [--workers 2] [--timeout 60]"
CKPT = "runs/tiny/sft/model"  # what CKPT stands for: the smoke run's SFT checkpoint
ABLATE = ("flowlm ablate tiny --arm base --arm lr_high:stages.midtrain.optim.lr=3e-3 --arm seed2:stages.midtrain.seed=2 "
          "--run-dir runs/ablate-midtrain")
TOOLS_GEN = ("flowlm generate --model runs/tiny-post/sft/model --file prompts.jsonl --tools calculator,python "
             "--max-tool-calls 5")
TRACE_TEXT = 'flowlm trace --model runs/tiny-post/sft/model --text "Step 1: 16 + 28 = 44"'
TRACE_GENERATED = ("flowlm generate --model runs/tiny-post/sft/model --file prompts.jsonl | "
                   "flowlm trace --model runs/tiny-post/sft/model --out traced.jsonl")
TRACE_STORE = ('flowlm trace --store runs/tiny/tokenizer/stores/pretrain --tokenizer runs/tiny/tokenizer/tokenizer '
               '--text "def main():"')


def multinode(cmd: str) -> str:
    """A multi-node command on this one machine: every node is 127.0.0.1 with one CPU process, a free port,
    the shared run directory under the workspace."""
    return (cmd.replace("--nproc_per_node 8", "--nproc_per_node 1").replace("node0", "127.0.0.1")
            .replace("29500", "{port}").replace("/shared/", "{W}/shared/"))


TABLE: dict[str, Smoke] = {
    # --- README.md ---------------------------------------------------------------------------------------------
    "pip install torch==2.13.0 && pip install -e . && flowlm run": Smoke(
        "flowlm run {SMOKE}", after=(), check=_check_base,
        shrunk="`flowlm run` with the smoke overrides (the shared run every later command reads, runs/tiny)",
        weaker="the two `pip install`s are not run (no registry, torch must stay): the installed torch "
               "satisfies torch==2.13.0 and flowlm is this checkout installed with -e"),
    "pip install torch==2.13.0 && pip install -e '.[dev]' && python -m pytest -p no:cacheprovider": Smoke(
        f"cd {shlex.quote(str(ROOT))} && python -m pytest -p no:cacheprovider --collect-only", after=(),
        check=_check_pytest_collects,
        weaker="the suite is this run: it is collected (every test module imports, no collection error), not "
               "run; the pip installs are checked as installed (torch pin, every requirement of flowlm[dev])"),
    "flowlm run tiny stages.pretrain.steps=200 --run-dir runs/longer": Smoke(
        "flowlm run tiny stages.pretrain.steps=200 --run-dir runs/longer {SMOKE}", after=(), check=_check_longer,
        shrunk="smoke overrides after the command's own (pretrain runs 4 steps, not 200)"),
    "flowlm train tiny --stage pretrain": Smoke(
        "flowlm train tiny --stage pretrain {SMOKE}", same_source=True,
        check=_check_skips_pretrain,
        shrunk="smoke overrides; in runs/tiny after `flowlm run`, so pretrain is skipped as unchanged"),
    README_TORCHRUN: Smoke(
        README_TORCHRUN + " {SMOKE}", after=(), check=check_run(Path("runs/ddp"), ["corpus", "tokenizer", "pretrain"]),
        shrunk="smoke overrides; 2 CPU processes (gloo); torchrun's port is a free one (PET_MASTER_PORT)"),
    "flowlm eval --model runs/tiny/long_context/model": Smoke(
        "flowlm eval --model runs/tiny/long_context/model --max-items 4", check=_check_bpb,
        shrunk="--max-items 4 (BPB items per task)"),
    "flowlm eval --model runs/tiny/long_context/model --suite builtin --n 4": Smoke(
        "flowlm eval --model runs/tiny/long_context/model --suite builtin --n 4 {GEN}",
        check=_check_suites("builtin"), shrunk=GEN),
    "flowlm verify --file rows.jsonl": Smoke("flowlm verify --file rows.jsonl", after=(), check=_check_verdicts(None)),
    "flowlm report runs/tiny": Smoke(
        "flowlm report runs/tiny", check=_check_report),
    "flowlm train --objective sft --init runs/tiny/long_context/model --data chat.jsonl": Smoke(
        "flowlm train --objective sft --init runs/tiny/long_context/model --data chat.jsonl "
        "stages.sft.seq_len=128 stages.sft.batch_size=2", check=_check_model("runs/sft", "sft"),
        shrunk="seq_len 128, batch 2 (12 short chat rows make one 2048-token pack, too few for a batch of 8)"),
    "flowlm train --objective dpo --init runs/tiny-post/sft/model --data pairs.jsonl stages.dpo.objective.beta=0.1": Smoke(
        "flowlm train --objective dpo --init runs/tiny-post/sft/model --data pairs.jsonl stages.dpo.objective.beta=0.1 "
        "stages.dpo.seq_len=128 stages.dpo.batch_size=4", after=("post",), check=_check_model("runs/dpo", "dpo"),
        shrunk="seq_len 128, batch 4; runs/tiny-post is the smoke run with tiny-post's sft stage"),
    "flowlm train --objective grpo --init runs/tiny-post/sft/model --data prompts.jsonl stages.grpo.steps=20": Smoke(
        "flowlm train --objective grpo --init runs/tiny-post/sft/model --data prompts.jsonl stages.grpo.steps=2 "
        "stages.grpo.rollout.group_size=4 stages.grpo.rollout.max_new_tokens=16 stages.grpo.rollout.max_draws=1",
        after=("post",), check=_check_model("runs/grpo", "grpo"),
        shrunk="2 steps of 4 samples x 16 new tokens, one draw; runs/tiny-post is the smoke run with tiny-post's sft "
               "stage"),
    COLDSTART_BUILTIN: Smoke(COLDSTART_BUILTIN, after=(), check=_check_post("sft.jsonl", "rows", 200)),
    "flowlm post pairs --file prompts.jsonl --strong runs/big/model --weak runs/small/model --out pairs.jsonl": Smoke(
        "flowlm post pairs --file prompts.jsonl --strong runs/big/model --weak runs/small/model --out pairs.jsonl "
        "--set teacher.max_new_tokens=16", after=("post",), check=_check_post("pairs.jsonl", "pairs", 4),
        shrunk="16 new tokens; runs/big, runs/small: the smoke run's long_context and pretrain models"),
    ABLATE: Smoke(ABLATE + " {SMOKE}", after=(), check=_check_ablate, shrunk="smoke overrides for every arm"),
    # --- docs/eval.md ------------------------------------------------------------------------------------------
    "flowlm eval --model runs/tiny/sft/model --suite builtin": Smoke(
        "flowlm eval --model runs/tiny/sft/model --suite builtin {GEN}", after=("post",),
        check=_check_suites("builtin"), shrunk=GEN),
    "flowlm eval --model CKPT --suite gsm8k=/data/gsm8k/test.jsonl,math500=/data/math500 --n 8 --out r.json": Smoke(
        f"flowlm eval --model {CKPT} --suite gsm8k={{W}}/data/gsm8k/test.jsonl,math500={{W}}/data/math500 --n 8 "
        "--out r.json {GEN}", after=("post",), check=_check_suites("gsm8k", "math500", out="r.json"),
        shrunk=f"{GEN}; two-row files in the published formats"),
    "flowlm eval --model CKPT --suite humaneval --file /data/humaneval/HumanEval.jsonl.gz --format plain": Smoke(
        f"flowlm eval --model {CKPT} --suite humaneval --file {{W}}/data/humaneval/HumanEval.jsonl.gz --format plain "
        "{GEN}", after=("post",), check=_check_suites("humaneval"),
        shrunk=f"{GEN}; a two-problem HumanEval.jsonl.gz (the completions run in the sandbox)"),
    "flowlm eval --model runs/tiny/soup/model": Smoke(
        "flowlm eval --model runs/tiny/soup/model --max-items 4", check=_check_bpb, shrunk="--max-items 4"),
    # --- docs/generate.md --------------------------------------------------------------------------------------
    GEN_SYNOPSIS: Smoke(
        f"flowlm generate --model {CKPT} --file in.jsonl --out out.jsonl --backend native --n 2 --temperature 1.0 "
        "--top-p 0.9 --top-k 5 --min-p 0.05 --max-new-tokens 8 --stop S --stop T --stop-token-id 0 "
        "--stop-token-id 1 --seed 0 --max-slots 4 --no-thinking --no-progress", after=("post",),
        check=_check_generate_synopsis,
        shrunk="a usage synopsis: run with every option given, 8 new tokens",
        weaker="`--backend vllm` needs CUDA and the vllm extra: the native backend runs; every option the "
               "synopsis names is checked against the parser"),
    "cat in.jsonl | flowlm generate --model CKPT > out.jsonl": Smoke(
        f"cat in.jsonl | flowlm generate --model {CKPT} --max-new-tokens 8 > out.jsonl", after=("post",),
        check=_check_generate, shrunk="8 new tokens"),
    # --- docs/post.md (its first command is README's coldstart) -----------------------------------------------
    "flowlm post coldstart --file prompts.jsonl --teacher runs/big/model --query-teacher runs/instruct/model -n 8 "
    "--bench gsm8k_test.jsonl --set keep_per_prompt=2 --set no_think_fraction=0.2 --out sft.jsonl": Smoke(
        "flowlm post coldstart --file prompts.jsonl --teacher runs/big/model --query-teacher runs/instruct/model -n 8 "
        "--bench gsm8k_test.jsonl --set keep_per_prompt=2 --set no_think_fraction=0.2 --out sft.jsonl "
        "--set teacher.max_new_tokens=16", after=("post",), check=_check_post("sft.jsonl", "rows", 4),
        shrunk="16 new tokens; runs/instruct: the smoke run's SFT model"),
    "flowlm post pairs --file prompts.jsonl --strong runs/big/model --weak runs/small/model --out dpo.jsonl": Smoke(
        "flowlm post pairs --file prompts.jsonl --strong runs/big/model --weak runs/small/model --out dpo.jsonl "
        "--set teacher.max_new_tokens=16", after=("post",), check=_check_post("dpo.jsonl", "pairs", 4),
        shrunk="16 new tokens"),
    "flowlm post pairs --builtin 100 --pool procedural --pool weak --set thinking=false --set max_length_diff=100": Smoke(
        "flowlm post pairs --builtin 100 --pool procedural --pool weak --set thinking=false --set max_length_diff=100",
        after=(), check=_check_judge_pairs),
    "flowlm post multiturn --file prompts.jsonl --teacher runs/big/model --simulator runs/small/model --out mt.jsonl": Smoke(
        "flowlm post multiturn --file prompts.jsonl --teacher runs/big/model --simulator runs/small/model --out mt.jsonl "
        "--set teacher.max_new_tokens=16", after=("post",), check=_check_multiturn,
        shrunk="16 new tokens; the smoke run's models cannot play the user, so the check is the accounting"),
    "flowlm post simfc --file toolsets.jsonl --teacher runs/big/model --simulator runs/small/model --out fc.jsonl": Smoke(
        "flowlm post simfc --file toolsets.jsonl --teacher runs/big/model --simulator runs/small/model --out fc.jsonl "
        "--set teacher.max_new_tokens=16 --set per_toolset=2", after=("post",), check=_check_simfc,
        shrunk="16 new tokens, 2 conversations per tool set; the smoke run's models cannot play the roles, so the "
               "check is the accounting, not the rows"),
    # --- docs/rl.md --------------------------------------------------------------------------------------------
    RL_SYNOPSIS: Smoke(
        f"flowlm rl filter --model {CKPT} --file prompts.jsonl -k 8 --max-pass-rate 0.625 --out kept.jsonl "
        "--set temperature=0.7 --set max_new_tokens=512 --set min_pass_rate=0.1 --set verify_workers=4 "
        "--set max_new_tokens=16", after=("post",),
        check=_check_rl_filter,
        shrunk="a usage synopsis: run with every optional part; 16 new tokens (a later --set wins)"),
    GSM8K_PROMPTS: Smoke(GSM8K_PROMPTS.replace("/data/", "{W}/data/"), after=(), check=_check_gsm8k_rows("gsm8k_rl.jsonl"),
                         shrunk="/data/gsm8k/train.jsonl.gz: a 2-row file in GSM8K's format under the workspace"),
    GSM8K_FILTER: Smoke(
        f"{GSM8K_PROMPTS.replace('/data/', '{W}/data/')} && {GSM8K_FILTER.replace('CKPT', CKPT)} -k 2 "
        "--set max_new_tokens=16", after=("post",), check=_check_gsm8k_rows("gsm8k_hard.jsonl"),
        shrunk="after the command above makes gsm8k_rl.jsonl here; 2 samples of 16 new tokens"),
    GSM8K_GRPO: Smoke(
        f"{GSM8K_PROMPTS.replace('/data/', '{W}/data/')} && {GSM8K_FILTER.replace('CKPT', CKPT)} -k 2 "
        f"--set max_new_tokens=16 && {GSM8K_GRPO.replace('CKPT', CKPT).replace('steps=100', 'steps=2')} "
        "stages.grpo.rollout.group_size=4 stages.grpo.rollout.max_new_tokens=16 stages.grpo.rollout.max_draws=1",
        after=("post",), check=_check_model("runs/grpo", "grpo"),
        shrunk="after the two commands above make gsm8k_hard.jsonl here; 2 steps of 4 samples x 16 new tokens, "
               "one draw"),
    # --- docs/scale-out.md (its first command is README's torchrun) -------------------------------------------
    "torchrun --nproc_per_node 8 -m flowlm.cli run my_recipe.yaml model.preset=1b stages.pretrain.precision=bf16": Smoke(
        "torchrun --nproc_per_node 2 -m flowlm.cli run my_recipe.yaml model.preset=1b stages.pretrain.precision=bf16",
        after=(), check=_check_1b,
        weaker="8 GPUs: 2 CPU processes (gloo); the 1B preset is selected, but my_recipe.yaml (a user's recipe, "
               "here corpus/tokenizer/pretrain at smoke size) shrinks it with model.overrides; bf16 autocast on CPU"),
    NODE.format(rank=0): Smoke(
        multinode(NODE.format(rank=0)), after=(), together="exp1", check=_check_exp1,
        weaker="two nodes with 8 GPUs: both commands run at once on this machine as two single-process nodes "
               "(node0 = 127.0.0.1, a free port, /shared under the workspace); my_recipe.yaml as above"),
    NODE.format(rank=1): Smoke(
        multinode(NODE.format(rank=1)), after=(), together="exp1", check=_check_exp1,
        weaker="node 1 of the two above, started with node 0"),
    SLURM: Smoke(
        multinode(SLURM), after=(NODE.format(rank=0), NODE.format(rank=1)), check=_check_slurm,
        env={"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[0-1]"}, same_source=True,
        weaker="no Slurm here: stand-ins for srun (one task per node, all on this machine) and scontrol "
               "(every node is 127.0.0.1) run the documented line, 1 process per node; it reruns the finished "
               "two-node run, which skips every stage (the docs: rerunning resumes)"),
    TOOLS_GEN: Smoke(TOOLS_GEN.replace("calculator,python", "calculator") + " --max-new-tokens 16 --out tools.jsonl",
                     after=("post",), check=_check_tools,
                     shrunk="--tools calculator alone (the smoke model's 512-token context, with its 512-token "
                            "vocabulary, cannot hold both tools' signatures; tests/tools runs python), 16 new "
                            "tokens per turn; the rows go to tools.jsonl"),
    # --- docs/trace.md ---------------------------------------------------------------------------------------
    TRACE_TEXT: Smoke(TRACE_TEXT, after=("post",), check=_check_trace_text),
    TRACE_GENERATED: Smoke(
        TRACE_GENERATED.replace("--file prompts.jsonl", "--file prompts.jsonl --max-new-tokens 16"), after=("post",),
        check=_check_traced_rows, shrunk="--max-new-tokens 16 for the generation"),
    TRACE_STORE: Smoke(TRACE_STORE, check=_check_trace_store),
    # --- docs/verify.md (its first command is a usage synopsis) -------------------------------------------------
    VERIFY_SYNOPSIS: Smoke(
        "flowlm verify --file rows.jsonl --out verdicts.jsonl --name math --workers 2 --timeout 60", after=(),
        check=_check_verify_synopsis,
        shrunk="a usage synopsis: run with every option (NAME = math; stdin is the next command's)"),
    "python -m flowlm.verify.cli --file rows.jsonl": Smoke(
        "python -m flowlm.verify.cli --file rows.jsonl", after=(), check=_check_verdicts(None)),
    "cat rows.jsonl | flowlm verify > verdicts.jsonl": Smoke(
        "cat rows.jsonl | flowlm verify > verdicts.jsonl", after=(), check=_check_verdicts("verdicts.jsonl")),
}
BASE_KEY = "pip install torch==2.13.0 && pip install -e . && flowlm run"


# --- running ---------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(ws: Path) -> dict[str, str]:
    # the installed entry points of this interpreter first (`flowlm`, `torchrun`, `python`), then the Slurm stand-ins
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", ""), str(ws / "fakebin")])
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "W": str(ws)}
    for k in ("FLOWLM_DEBUG", "FLOWLM_PLUGINS", "PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS"):
        env.pop(k, None)
    return env


def start(cmd: str, cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen, float]:
    proc = subprocess.Popen(["bash", "-c", cmd], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    return proc, time.perf_counter()


TIMEOUT = 420  # seconds for one command (or the nodes of one multi-node run together)


def finish(proc: subprocess.Popen, t0: float, result: Result, timeout: float = TIMEOUT) -> Result:
    try:
        result.stdout, result.stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the command, and any torchrun workers
        result.stdout, result.stderr = proc.communicate()
        result.stderr += f"\n[test] killed after {timeout} s"
    result.rc, result.seconds = proc.returncode, time.perf_counter() - t0
    return result


def command_dir(ws: Path, name: str) -> Path:
    """A fresh directory for one command: its input files copied, the shared runs linked."""
    d = ws / "c" / name
    (d / "runs").mkdir(parents=True)
    for f in (ws / "inputs").iterdir():
        shutil.copy(f, d / f.name)
    for run in ("tiny", "tiny-post", "big", "small", "instruct"):
        os.symlink(ws / "runs" / run, d / "runs" / run)
    return d


def sh(cmd: str, cwd: Path, env: dict[str, str]) -> Result:
    proc, t0 = start(cmd, cwd, env)
    return finish(proc, t0, Result(cmd, cwd))


def fill(template: str, ws: Path) -> str:
    return template.replace("{SMOKE}", shlex.join(SMOKE)).replace("{GEN}", GEN).replace("{W}", str(ws))


def build_post(ws: Path, env: dict[str, str]) -> Result:
    """tiny-post's sft_data and sft in the smoke run (as `flowlm run tiny-post --run-dir runs/tiny` would),
    and the checkpoints the docs name: runs/tiny-post (the same run), runs/big, runs/small, runs/instruct."""
    # every stage up to sft is selected: a base stage whose fingerprint moved (the source changed since) reruns
    stages = " ".join(f"--stage {s}" for s in [*BASE_STAGES, "sft_data", "sft"])
    r = sh(f"flowlm train tiny-post {stages} --run-dir runs/tiny --no-progress {shlex.join(SMOKE + POST_SMOKE)}", ws, env)
    if r.rc == 0:
        os.symlink("tiny", ws / "runs" / "tiny-post")
        for name, src in (("big", "long_context"), ("small", "pretrain"), ("instruct", "sft")):
            (ws / "runs" / name).mkdir()
            shutil.copytree(ws / "runs" / "tiny" / src / "model", ws / "runs" / name / "model")
    return r


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Result]:
    """Run every table entry once, two at a time, each after the setup steps and entries it needs."""
    from flowlm.flow.record import code_version

    source = code_version()["source_sha256"]
    ws = tmp_path_factory.mktemp("docs")
    (ws / "runs").mkdir()
    write_inputs(ws)
    env = base_env(ws)
    keys = list(TABLE)
    futures: dict[str, Future] = {}

    def setup() -> dict[str, Result]:
        base = sh(fill(TABLE[BASE_KEY].run, ws), ws, env)
        base.env = env
        post = build_post(ws, env) if base.rc == 0 else Result("tiny-post setup", ws, rc=-1, not_run="not run: 'base' failed")
        return {"base": base, "post": post}

    def needed(name: str) -> list[Result]:
        got = futures[name].result()
        return [got[name]] if name in ("base", "post") else got

    def run_group(group: list[str]) -> list[Result]:
        dirs = {k: command_dir(ws, f"{keys.index(k):02d}") for k in group}
        failed = [a for k in group for a in TABLE[k].after if any(r.rc != 0 for r in needed(a))]
        if failed:
            return [Result(TABLE[k].run, dirs[k], rc=-1, not_run=f"not run: {failed[0]!r} failed") for k in group]
        port = str(free_port())  # one per group: the nodes of one run meet there
        started = []
        for k in group:
            cmd = fill(TABLE[k].run, ws).replace("{port}", port)
            e = {**env, "PET_MASTER_PORT": str(free_port()), **TABLE[k].env}  # torchrun's default port, free
            started.append((k, e, *start(cmd, dirs[k], e)))
        deadline = time.perf_counter() + TIMEOUT
        return [finish(proc, t0, Result(proc.args[-1], dirs[k], env=e), timeout=max(1.0, deadline - time.perf_counter()))
                for k, e, proc, t0 in started]

    def rank(k: str) -> int:  # no setup first, then what needs the base run, then what needs tiny-post's sft
        return 2 if "post" in TABLE[k].after else 1 if "base" in TABLE[k].after else 0

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures["base"] = futures["post"] = pool.submit(setup)
        grouped: set[str] = {BASE_KEY}
        # submitted after everything it waits for, so a waiting entry never holds up one it needs
        for k in sorted(keys, key=rank):
            if k in grouped:
                continue
            group = [g for g in keys if TABLE[k].together and TABLE[g].together == TABLE[k].together] or [k]
            grouped |= set(group)
            fut = pool.submit(run_group, group)
            for g in group:
                futures[g] = fut
        out = {"base": futures["base"].result()["base"], "post": futures["post"].result()["post"]}
        out[BASE_KEY] = out["base"]
        for k in keys:
            if k != BASE_KEY:
                group = futures[k].result()
                out[k] = next(r for r in group if r.cwd.name == f"{keys.index(k):02d}")
    lines = [f"{r.seconds:7.1f} s  rc {r.rc}  {k[:100]}" for k, r in out.items() if k not in ("base", "post")]
    lines.append(f"{out['post'].seconds:7.1f} s  rc {out['post'].rc}  (setup: tiny-post sft_data + sft)")
    (ws / "timings.txt").write_text("\n".join(sorted(lines, reverse=True)) + "\n")
    print("\n".join(sorted(lines, reverse=True)), file=sys.stderr)
    if code_version()["source_sha256"] != source:
        out["source changed"] = Result("", ws)
    return out


# --- the tests -------------------------------------------------------------------------------------------------

def test_every_documented_command_has_a_smoke_run():
    documented = documented_commands()
    missing = {cmd: where for cmd, where in documented.items() if cmd not in TABLE}
    assert not missing, ("documented commands with no row in TABLE (add how each runs at smoke size):\n"
                         + "\n".join(f"  {', '.join(w)}: {c}" for c, w in missing.items()))


def test_every_table_row_is_still_documented():
    stale = [k for k in TABLE if k not in documented_commands()]
    assert not stale, f"TABLE rows no doc shows any more (remove or update them): {stale}"


def test_every_row_says_what_it_changed():
    for key, smoke in TABLE.items():
        ran = fill(smoke.run, Path("/W"))
        assert ran == key or smoke.shrunk or smoke.weaker, f"{key!r} runs as {ran!r} without saying why"


def test_extraction_rules():
    md = textwrap.dedent("""\
        ```
        recipe.yaml ──► config.py
        ```
        ```
        flowlm x --a 1   # a comment
        flowlm y [--b B]
            [--c C]
        ```
        ```bash
        # a comment line
        torchrun --n 2 \\
            -m flowlm.cli run r.yaml
        srun bash -c 'a \\
            b'
        ```
        ```python
        flowlm_is_not_a_command = 1
        ```
        ```console
        $ flowlm z
        some output
        ```
        """)
    cmds = [c for start, lang, body in shell_blocks(md) for _, c in block_commands(lang, body)]
    assert cmds == ["flowlm x --a 1", "flowlm y [--b B] [--c C]", "torchrun --n 2 -m flowlm.cli run r.yaml",
                    "srun bash -c 'a b'", "flowlm z"]


# torchrun's elastic agent logs, with a traceback, when the node hosting the rendezvous store exits while
# another node still waits at the exit barrier ("Error waiting on exit barrier"): a race inside torch at
# shutdown after every rank succeeded (rc 0), seen in two-node runs on one loaded machine.
ELASTIC_AGENT_LOG = "torch/distributed/elastic/agent/server/api.py:"


def own_output(stderr: str) -> str:
    """`stderr` without torchrun's elastic-agent log lines (see ELASTIC_AGENT_LOG)."""
    return "\n".join(line for line in stderr.splitlines() if ELASTIC_AGENT_LOG not in line)


def test_own_output_drops_only_the_elastic_agents_log_lines():
    err = ("E1206 16:30:09.152000 13329 torch/distributed/elastic/agent/server/api.py:1008] Traceback (most recent "
           "call last):\nTraceback (most recent call last):\n  File \"flowlm/cli.py\"")
    assert own_output(err) == 'Traceback (most recent call last):\n  File "flowlm/cli.py"'


@pytest.mark.slow
@pytest.mark.parametrize("key", list(TABLE), ids=[f"{i:02d}-{k.split(' [')[0][:60]}" for i, k in enumerate(TABLE)])
def test_documented_command_runs_at_smoke_size(results, key):
    r = results[key]
    where = ", ".join(documented_commands().get(key, ["(no longer documented)"]))
    if r.not_run:  # a setup step or entry it needs failed: show that one
        need = results.get(r.not_run.split("'")[1])
        pytest.fail(f"{where}: {key}\n{r.not_run}:\n{need.tail() if need else ''}")
    try:
        assert r.rc == 0, f"{where}: `{key}` failed at smoke size\n{r.tail()}"
        assert "Traceback" not in own_output(r.stderr) and "Traceback" not in r.stdout, r.tail()
        check = TABLE[key].check
        if check is not None:
            try:
                check(r)
            except (AssertionError, OSError, ValueError, KeyError) as exc:
                raise AssertionError(f"{where}: `{key}` ran but its result is wrong: {exc}\n{r.tail()}") from exc
    except AssertionError:
        if TABLE[key].same_source and "source changed" in results:
            pytest.skip("the package source was edited while this module ran: the stage fingerprints it relies on moved")
        raise
