"""Every `flowlm` verb run as a user runs it: the installed entry point in a subprocess, on small real input.

Each run checks the exit code, what lands on stdout (machine-readable records) and stderr (summaries,
one-line errors), and that no `Traceback` reaches the user. `verify` and `generate` have theirs in
tests/verify/test_cli.py and tests/generate/test_cli.py; `run`/`train`/`report` on a real run are covered by
tests/flow. The handler for unexpected errors (`flowlm.cli.run_guarded`) is unit-tested in-process.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli_entry import flowlm_command

import flowlm
from flowlm.cli import main, open_output, run_guarded
from flowlm.errors import ConfigError, FlowError


def run_flowlm(*args: str, stdin: str | None = None, tmpdir: Path | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `flowlm ARGS`; stdin is `stdin` or /dev/null (never the terminal pytest may hold)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("FLOWLM_DEBUG", None)
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    r = subprocess.run([*flowlm_command(), *args], input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                       capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert "Traceback" not in r.stdout and "Traceback" not in r.stderr, r.stderr
    return r


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


# --- a small corpus: 24 distinct English paragraphs, 4 exact copies, 1 short and 1 German document, and 3
# documents that quote a GSM8K-style question word for word ---------------------------------------------------

PARAGRAPHS = [
    "The old lighthouse on the northern cape was built in 1858 from granite quarried a few miles inland. "
    "For more than a century its keepers climbed the spiral stairs every evening to trim the wick, and their "
    "logbooks record storms, shipwrecks and the slow arrival of electric light in the nearby village.",
    "Sourdough bread depends on a living culture of wild yeast and lactic acid bacteria. A baker feeds the "
    "starter with flour and water each day, and the bubbles that rise through the jar show that it is ready. "
    "Long, cool fermentation gives the loaf its open crumb and its gently sour taste.",
    "Honeybees communicate the location of flowers through a waggle dance performed on the vertical comb. "
    "The angle of the dance relative to gravity encodes the direction of the food source relative to the sun, "
    "while the duration of the waggle run tells the other foragers how far they will have to fly.",
    "When the city council approved the new bicycle lanes, many shop owners worried that they would lose "
    "customers who arrived by car. A year later, a survey found that foot traffic along the main street had "
    "increased, and several cafes had added outdoor tables where parking spaces used to be.",
    "Glaciers move because ice deforms under its own weight. Near the bed, meltwater can lubricate the "
    "contact with the rock, so that the whole body of ice slides forward. Scientists drill boreholes and place "
    "sensors in them to measure how quickly the ice flows during summer and winter.",
    "The first printed newspapers in Europe appeared in the early seventeenth century. They were small, "
    "irregular sheets that reported on wars, trade and the doings of distant courts. Readers often gathered in "
    "coffee houses, where a single copy might be read aloud and argued over for an entire afternoon.",
    "A good night of sleep helps the brain consolidate what it learned during the day. Researchers have shown "
    "that students who sleep after studying remember more words than those who stay awake, and that short "
    "naps in the afternoon can also improve performance on memory tests.",
    "Mangrove forests grow along tropical coastlines where fresh water meets the sea. Their tangled roots slow "
    "the waves, trap sediment and shelter young fish from predators. When mangroves are cleared for shrimp "
    "farms, nearby villages often lose both their fisheries and their protection from storms.",
    "The violin family took its modern form in northern Italy during the sixteenth century. Makers in Cremona "
    "experimented with the arching of the plates, the thickness of the wood and the recipe of the varnish, "
    "and some of their instruments are still played in concert halls around the world.",
    "Compound interest means that the interest earned in one year is added to the balance and itself earns "
    "interest in the following years. Over a long period the effect is dramatic, which is why financial "
    "advisers encourage young workers to begin saving for retirement as early as they can.",
    "On a clear night far from city lights, the band of the Milky Way stretches across the sky. It is the disk "
    "of our own galaxy seen from the inside, and the dark lanes that split it are clouds of dust that block the "
    "light of the stars behind them.",
    "Our hiking group left the trailhead just after dawn and followed the river upstream through a forest of "
    "pine and birch. By noon we had reached the alpine meadow, where we ate lunch beside a small lake and "
    "watched marmots whistle at each other from the rocks.",
    "Vaccines train the immune system to recognise a pathogen without causing the disease itself. Some contain "
    "a weakened or inactivated virus, while others deliver a single protein or the genetic instructions for "
    "making it, so that the body can prepare antibodies before a real infection arrives.",
    "The library at the end of our street reopened after a long renovation. The reading room now has tall "
    "windows, comfortable chairs and a corner for children, and the librarians run a weekly club where "
    "teenagers discuss the novels they have been reading at school.",
    "Tides are caused mainly by the gravitational pull of the moon on the oceans. Because the pull is stronger "
    "on the side of the earth facing the moon, the water bulges there and on the opposite side, and most "
    "coastlines see two high tides and two low tides every day.",
    "Learning a second language as an adult is slower than learning one as a child, but it is far from "
    "impossible. Regular conversation with native speakers, reading simple books and listening to the radio "
    "help learners build vocabulary and become comfortable with the rhythm of the language.",
    "The railway reached the valley in 1872, and within a decade the small market town had doubled in size. "
    "Farmers could now send their milk and cheese to the city overnight, and families from the city began to "
    "spend their summer holidays in the hills above the station.",
    "Octopuses are remarkably intelligent animals. They can open jars, escape from aquarium tanks and change "
    "the colour and texture of their skin in a fraction of a second. Most of their neurons are found not in "
    "the brain but in the arms, which can react to touch on their own.",
    "Composting turns kitchen scraps and garden waste into a dark, crumbly soil that plants love. The pile "
    "needs a balance of green material, such as vegetable peelings, and brown material, such as dry leaves, "
    "along with enough air and moisture for the microbes to do their work.",
    "The museum's new exhibition brings together paintings, letters and photographs from the artist's years "
    "in Paris. Visitors can follow her development from careful studies of still life to the bold, bright "
    "landscapes that made her famous, and can read the notes she wrote to her sister.",
    "Volcanic eruptions can cool the climate for a year or two. The sulphur dioxide they release forms tiny "
    "droplets high in the atmosphere that reflect sunlight back into space. After a large eruption in 1815, "
    "Europe and North America suffered a cold, wet summer and widespread crop failures.",
    "Good software documentation explains not only what each function does but also why the design was "
    "chosen. New members of a team read it to understand the system, and experienced members rely on it when "
    "they return to a part of the code that they have not touched for many months.",
    "The annual harvest festival fills the village square with stalls of apples, pumpkins and fresh bread. "
    "Children run between the tables while a brass band plays in the corner, and in the evening everyone "
    "gathers around a long table to share soup made from the vegetables of the season.",
    "Coral reefs cover a tiny fraction of the ocean floor but support about a quarter of all marine species. "
    "The corals themselves are colonies of small animals that live together with algae, and when the water "
    "becomes too warm the algae leave and the reef turns white in a process called bleaching.",
]
GERMAN = ("Der alte Leuchtturm an der nördlichen Küste wurde im Jahr 1858 aus Granit gebaut. Mehr als hundert "
          "Jahre lang stiegen die Wärter jeden Abend die Wendeltreppe hinauf, um den Docht zu schneiden, und ihre "
          "Bücher erzählen von Stürmen, Schiffbrüchen und der Ankunft des elektrischen Lichts im Dorf.")
GSM8K = [
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
     "How many clips did Natalia sell altogether in April and May?",
     "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"),
    ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
     "How much did she earn?", "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n#### 10"),
    ("Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
     "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
     "How much more money does Betty need to buy the wallet?", "#### 5"),
    ("James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
     "He writes each friend 3*2=<<3*2=6>>6 pages a week.\n#### 624"),
    ("Albert is wondering how much pizza he can eat in one day. He buys 2 large pizzas and 2 small pizzas. "
     "A large pizza has 16 slices and a small pizza has 8 slices. If he eats it all, how many pieces does he "
     "eat that day?", "#### 48"),
]
BASE = {f"doc{i}" for i in range(len(PARAGRAPHS))}
COPIES = {f"copy{i}" for i in range(4)}
PLANTED = {f"planted{i}" for i in range(3)}
FILTERED = {"short0", "german0"}
ALL = BASE | COPIES | PLANTED | FILTERED


def corpus_docs() -> list[dict[str, Any]]:
    docs = [{"id": f"doc{i}", "text": t, "source": "web"} for i, t in enumerate(PARAGRAPHS)]
    docs += [{"id": f"copy{i}", "text": PARAGRAPHS[5 * i], "source": "web"} for i in range(4)]  # later: dropped
    docs += [{"id": f"planted{i}", "source": "web",
              "text": "My daughter brought this problem home from school and we worked through it together at "
                      f"the kitchen table after dinner. {q} It took us a while, but she got there in the end."}
             for i, (q, _) in enumerate(GSM8K[:3])]
    docs += [{"id": "short0", "text": "Click here to subscribe.", "source": "web"},
             {"id": "german0", "text": GERMAN, "source": "web"}]
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    (d / "corpus.jsonl").write_text("".join(json.dumps(x) + "\n" for x in corpus_docs()), encoding="utf-8")
    (d / "gsm8k").mkdir()  # the benchmark is named after its directory, as in shared/data/gsm8k/test.jsonl
    (d / "gsm8k" / "test.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GSM8K),
                                   encoding="utf-8")
    return d


def jsonl_ids(text: str) -> list[str]:
    return [json.loads(line)["id"] for line in text.splitlines()]


def step_table(stderr: str) -> dict[str, tuple[int, int]]:
    """`step -> (docs in, docs out)` from the accounting table the data verbs print on stderr."""
    out = {}
    for line in stderr.splitlines():
        parts = line.split()
        if len(parts) >= 12 and parts[1] == "in" and parts[6] == "->":
            out[parts[0]] = (int(parts[2]), int(parts[8]))
    return out


# --- the top-level command ---------------------------------------------------------------------------------


def test_version() -> None:
    r = run_flowlm("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"flowlm {flowlm.__version__}"


def test_help_lists_every_verb() -> None:
    r = run_flowlm("--help")
    assert r.returncode == 0 and r.stderr == ""
    for verb in ("run", "train", "eval", "report", "verify", "data", "generate"):
        assert f"\n    {verb} " in r.stdout, verb
    r = run_flowlm("data", "--help")
    assert r.returncode == 0 and all(v in r.stdout for v in ("run", "filter", "dedup", "quality", "decon"))
    r = run_flowlm("data", "decon", "--help")
    assert r.returncode == 0 and all(f in r.stdout for f in ("--file", "--out", "--bench", "stdout"))


def test_no_verb_and_unknown_flag_are_argparse_errors() -> None:
    r = run_flowlm()
    assert r.returncode == 2 and r.stdout == "" and "usage: flowlm" in r.stderr
    r = run_flowlm("verify", "--fiel", "x.jsonl")
    assert r.returncode == 2 and "unrecognized arguments: --fiel" in r.stderr


def test_report_on_missing_dir_is_one_line(tmp_path: Path) -> None:
    r = run_flowlm("report", str(tmp_path / "nope"))
    assert r.returncode == 1 and r.stdout == ""
    assert "nope/flow.json: no run record" in one_error_line(r)


def test_train_without_stage_is_a_usage_error() -> None:
    r = run_flowlm("train", "tiny")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1] == "flowlm train: error: the following arguments are required: --stage (or --objective)"


def test_run_unknown_recipe_is_one_line(tmp_path: Path) -> None:
    r = run_flowlm("run", "tinyy", "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert "unknown recipe 'tinyy' (did you mean 'tiny'?)" in one_error_line(r)
    assert not (tmp_path / "run").exists()


# --- flowlm data -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("verb,extra,kept,steps", [
    ("filter", [], ALL - FILTERED, ["read", "filter"]),
    ("dedup", [], ALL - COPIES, ["read", "filter", "exact", "minhash", "substring"]),
    ("decon", ["--bench", "{gsm8k}"], ALL - PLANTED, ["read", "filter", "decontam"]),
])
def test_data_verb_writes_kept_docs_to_stdout(corpus: Path, tmp_path: Path, verb: str, extra: list[str],
                                              kept: set[str], steps: list[str]) -> None:
    extra = [e.format(gsm8k=corpus / "gsm8k" / "test.jsonl") for e in extra]
    r = run_flowlm("data", verb, "--file", str(corpus / "corpus.jsonl"), *extra, tmpdir=tmp_path)
    assert r.returncode == 0, r.stderr
    ids = jsonl_ids(r.stdout)
    assert sorted(ids) == sorted(kept)
    table = step_table(r.stderr)
    assert list(table) == steps and table["read"][0] == len(ALL) and table[steps[-1]][1] == len(ids)
    assert "quarantined: 0" in r.stderr
    assert list(tmp_path.iterdir()) == []  # the temporary pipeline directory is gone


@pytest.mark.parametrize("verb,steps", [
    ("quality", ["read", "filter", "upsample"]),
    ("run", ["read", "filter", "exact", "minhash", "substring", "upsample"]),
])
def test_data_verbs_with_upsampling(corpus: Path, tmp_path: Path, verb: str, steps: list[str]) -> None:
    r = run_flowlm("data", verb, str(corpus / "corpus.jsonl"), tmpdir=tmp_path)
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    table = step_table(r.stderr)
    assert list(table) == steps and table[steps[-1]][1] == len(docs) > 0
    by_text = {d["text"]: d["id"] for d in corpus_docs() if d["id"] not in COPIES}
    assert all(d["text"] in by_text for d in docs)  # copies of input documents, nothing invented
    if verb == "run":  # filtered documents are gone before upsampling repeats the best ones
        assert not {by_text[d["text"]] for d in docs} & FILTERED
    assert list(tmp_path.iterdir()) == []


def test_data_reads_stdin(corpus: Path, tmp_path: Path) -> None:
    text = (corpus / "corpus.jsonl").read_text(encoding="utf-8")
    for args in ([], ["--file", "-"]):
        r = run_flowlm("data", "filter", *args, stdin=text, tmpdir=tmp_path)
        assert r.returncode == 0, r.stderr
        assert sorted(jsonl_ids(r.stdout)) == sorted(ALL - FILTERED)
        assert list(tmp_path.iterdir()) == []


def test_data_quarantine_of_stdin_names_stdin_lines(tmp_path: Path) -> None:
    good = json.dumps({"id": "a", "text": PARAGRAPHS[0]})
    r = run_flowlm("data", "filter", stdin=f"{good}\n{{broken\n", tmpdir=tmp_path)
    assert r.returncode == 0 and jsonl_ids(r.stdout) == ["a"]
    assert "quarantined: 1" in r.stderr and "<stdin>:2" in r.stderr


def test_data_decon_out_dir_keeps_pipeline_files(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # the exact command line from the bug report (positional input, -o before --bench)
    r = run_flowlm("data", "decon", str(corpus / "corpus.jsonl"), "-o", str(out), "--bench",
                   str(corpus / "gsm8k" / "test.jsonl"), tmpdir=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # records are in the directory; the table is on stderr
    assert f"stats: {out / 'stats.json'}" in r.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["steps"]["decontam"]["dropped"] == {"decontam:gsm8k": {"docs": 3, "tokens": 197}}
    kept = [json.loads(line)["id"] for p in sorted((out / "docs").glob("part-*.jsonl"))
            for line in p.read_text().splitlines()]
    assert sorted(kept) == sorted(ALL - PLANTED)
    hits = [json.loads(line) for line in (out / "decontam_report.jsonl").read_text().splitlines()]
    assert sorted((h["doc_id"], h["item_id"]) for h in hits) == [(f"planted{i}", str(i)) for i in range(3)]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_data_errors_are_one_line_and_leave_no_temp_dir(corpus: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = run_flowlm("data", "filter", "--file", str(tmp_path / "missing.jsonl"), tmpdir=tmp)
    assert r.returncode == 1 and r.stdout == ""
    assert "missing.jsonl: input path not found" in one_error_line(r)
    r = run_flowlm("data", "dedup", "--file", str(corpus / "corpus.jsonl"), "--set", "dedup.exact.polcy=first",
                   tmpdir=tmp)
    assert r.returncode == 2 and "polcy" in one_error_line(r)
    r = run_flowlm("data", "filter", "--file", str(corpus / "corpus.jsonl"), "--excluded", tmpdir=tmp)
    assert r.returncode == 2 and "--out" in one_error_line(r)
    r = run_flowlm("data", "decon", "--file", str(corpus / "corpus.jsonl"), tmpdir=tmp)
    assert r.returncode == 2 and "--bench" in r.stderr  # argparse: required
    assert list(tmp.iterdir()) == []


def test_data_without_input_on_a_terminal_is_one_line(tmp_path: Path) -> None:
    r = _run_with_terminal_stdin(["data", "filter"], tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert "no input" in one_error_line(r) and list(tmp_path.iterdir()) == []


def _run_with_terminal_stdin(args: list[str], tmpdir: Path) -> subprocess.CompletedProcess[str]:
    """`flowlm ARGS` with a pseudo-terminal as stdin: what a user gets typing the command with no input."""
    primary, secondary = pty.openpty()
    try:
        env = {**os.environ, "TMPDIR": str(tmpdir)}
        r = subprocess.run([*flowlm_command(), *args], stdin=secondary, capture_output=True, text=True, env=env,
                           timeout=120)
    finally:
        os.close(primary)
        os.close(secondary)
    assert "Traceback" not in r.stderr
    return r


def test_data_ctrl_c_removes_temp_dir(tmp_path: Path) -> None:
    """Ctrl-C while the documents are read from stdin: exit 130, one line, the temporary directory removed."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    # as from a terminal: a shell that started pytest in the background (`cmd &`) makes children ignore
    # SIGINT, and Python then installs no KeyboardInterrupt handler (tests/test_benchmarks.py says the same)
    p = subprocess.Popen([*flowlm_command(), "data", "filter"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert p.stdin is not None
        p.stdin.write(json.dumps({"id": "a", "text": PARAGRAPHS[0]}) + "\n")
        p.stdin.flush()
        deadline = time.monotonic() + 60
        while not (list(tmp_path.glob("flowlm-data-*/stdin.jsonl")) or p.poll() is not None):
            assert time.monotonic() < deadline, "flowlm data never started reading stdin"
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)  # stdin is still open: the verb is blocked reading it
        p.wait(timeout=60)  # before communicate(), which would close stdin: the interrupt alone must end it
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130 and out == "" and err.strip() == "interrupted", err
    assert list(tmp_path.iterdir()) == []


def test_open_output_replaces_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text("old\n")
    with pytest.raises(KeyboardInterrupt), open_output(out) as fh:
        fh.write("half\n")
        raise KeyboardInterrupt
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["o.jsonl"]
    with open_output(out) as fh:
        fh.write("new\n")
        assert out.read_text() == "old\n"  # nothing visible until the block ends
    assert out.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["o.jsonl"]


# --- unexpected errors: one line plus a crash log, FLOWLM_DEBUG=1 re-raises -------------------------------


def _boom() -> int:
    raise RuntimeError("disk on fire\nsecond line")


def test_internal_error_is_one_line_with_crash_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FLOWLM_DEBUG", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert run_guarded(_boom) == 1
    out, err = capsys.readouterr()
    log = tmp_path / f"flowlm-crash-{os.getpid()}.log"
    assert out == "" and err == f"error: internal error: RuntimeError: disk on fire ... (full traceback in {log})\n"
    text = log.read_text()
    assert f"flowlm {flowlm.__version__}" in text and "Traceback" in text and "in _boom" in text
    assert "second line" in text


def test_internal_error_when_the_log_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FLOWLM_DEBUG", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    assert run_guarded(lambda: int("x")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: internal error: ValueError: invalid literal") and "traceback not saved" in err
    assert err.count("\n") == 1


def test_flowlm_debug_reraises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the "0" case below writes its crash log here
    monkeypatch.setenv("FLOWLM_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_guarded(_boom)
    monkeypatch.setenv("FLOWLM_DEBUG", "0")  # "0" means off
    assert run_guarded(_boom) == 1 and (tmp_path / f"flowlm-crash-{os.getpid()}.log").is_file()


PEER_DIES = """
import datetime, os, signal, sys, torch, torch.distributed as dist
from flowlm.cli import run_guarded

def body():
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))  # never a hung test
    t = torch.ones(4)
    dist.all_reduce(t)  # both ranks are up
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(t)  # rank 0: its peer is gone
    return 0

sys.exit(run_guarded(body))
"""


def test_a_collective_failed_by_a_dead_peer_is_named_not_an_internal_error(tmp_path: Path) -> None:
    """Two gloo ranks as torchrun starts them (RANK, WORLD_SIZE, MASTER_*); rank 1 is killed -9 between two
    all-reduces. Rank 0's one line says a peer stopped and how to resume, not "internal error"."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
            "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    base.pop("FLOWLM_DEBUG", None)
    procs = [subprocess.Popen([sys.executable, "-c", PEER_DIES], env={**base, "RANK": str(r)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    (_, err0), (_, _) = (p.communicate(timeout=120) for p in procs)
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 1, err0
    assert "Traceback" not in err0 and err0.count("\n") == 1, err0
    assert err0.startswith("error: rank 0 of 2: a collective failed because another rank stopped"), err0
    assert "rerun the same command to resume" in err0 and "internal error" not in err0
    assert f"full traceback in {tmp_path / 'flowlm-crash-'}" in err0 and list(tmp_path.glob("flowlm-crash-*.log"))


def test_a_peer_message_outside_a_process_group_is_still_an_internal_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The same text raised with no process group (a user's socket code, say) is not blamed on a rank."""
    monkeypatch.delenv("FLOWLM_DEBUG", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def fail() -> int:
        raise RuntimeError("Read error [127.0.0.1]:1234: Connection reset by peer")

    assert run_guarded(fail) == 1
    assert capsys.readouterr().err.startswith("error: internal error: RuntimeError: Read error")


@pytest.mark.parametrize("exc,code,message", [
    (FlowError("data.jsonl:3: bad"), 1, "error: data.jsonl:3: bad\n"),
    (ConfigError("override 'x' must look like key.sub=value"), 2, "error: override 'x' must look like key.sub=value\n"),
    (KeyboardInterrupt(), 130, "interrupted\n"),
])
def test_expected_failures(exc: BaseException, code: int, message: str, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLOWLM_DEBUG", "1")  # these are never re-raised

    def fail() -> int:
        raise exc

    assert run_guarded(fail) == code
    assert capsys.readouterr().err == message


def test_argparse_exit_passes_through() -> None:
    with pytest.raises(SystemExit) as info:
        run_guarded(lambda: main(["train", "tiny"]))
    assert info.value.code == 2


def test_main_guards_every_verb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    import flowlm.flow.report

    def broken(run_dir: Path) -> None:
        raise KeyError("stages")

    monkeypatch.delenv("FLOWLM_DEBUG", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(flowlm.flow.report, "print_report", broken)
    assert main(["report", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: internal error: KeyError: 'stages' (full traceback in ")


_CRASH = ("import sys, flowlm.flow.report as r, flowlm.cli as c\n"
          "def broken(d): raise KeyError('stages')\n"
          "r.print_report = broken\n"
          "sys.exit(c.main(['report', '.']))\n")


def test_crash_in_a_real_process(tmp_path: Path) -> None:
    """What a user sees from a real process: one line and a log; with FLOWLM_DEBUG=1 the traceback."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("FLOWLM_DEBUG", None)
    r = subprocess.run([sys.executable, "-c", _CRASH], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line = one_error_line(r)
    log = Path(line.rsplit("full traceback in ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path and log.name.startswith("flowlm-crash-") and "KeyError" in log.read_text()
    r = subprocess.run([sys.executable, "-c", _CRASH], capture_output=True, text=True, timeout=120,
                       env={**env, "FLOWLM_DEBUG": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr and "KeyError: 'stages'" in r.stderr


def test_report_numbers_keep_small_values_visible() -> None:
    """A distillation loss of 2e-6 printed as "0.0000" looked like a run that trained on nothing."""
    from flowlm.flow.report import _fmt

    assert [_fmt(x) for x in (0.0, 2.13e-6, 0.7007, 12345.6, 0.0123, None)] == [
        "0.0000", "2.13e-06", "0.7007", "12,346", "0.0123", "-"]


def test_report_wall_seconds_have_one_decimal() -> None:
    from flowlm.flow.report import _wall

    assert [_wall(x) for x in (0.73, 7.06, 1234.56, 3, None)] == ["0.7", "7.1", "1,234.6", "3.0", "-"]
