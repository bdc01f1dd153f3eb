"""`flowlm generate`: JSONL in, JSONL out in input order; bad lines name file:line; bad rows fail alone.

The entry-point tests run the installed `flowlm generate` as a user does: --file (or the older --prompts)
or stdin in, stdout or --out out, the progress bar and summary on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cli_entry import flowlm_command

from flowlm.errors import ConfigError, FlowError
from flowlm.generate import cli
from flowlm.model.hf import save_pretrained

from .conftest import end_of_turn_model, micro_model


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["generate", *argv])


@pytest.fixture(scope="module")
def ckpt(tok, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "ckpt"
    save_pretrained(micro_model(vocab_size=len(tok)), tok, path)
    return path


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_generate_rows_in_order(ckpt: Path, tmp_path: Path) -> None:
    prompts = _write(tmp_path / "in.jsonl", [
        json.dumps({"prompt": "def add(a, b):", "id": "a"}),
        json.dumps({"messages": [{"role": "user", "content": "2+2?"}], "id": "b"}),
        json.dumps({"prompt_ids": [5, 6, 7], "id": "c", "sampling": {"max_new_tokens": 3}}),
    ])
    out = tmp_path / "out.jsonl"
    args = _parse(["--model", str(ckpt), "--prompts", str(prompts), "--out", str(out), "--n", "2",
                   "--max-new-tokens", "6", "--seed", "1", "--no-progress"])
    assert args.func is cli.main
    assert cli.main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    for r in rows:
        assert r["error"] is None and len(r["completions"]) == 2
        for c in r["completions"]:
            assert 1 <= len(c["tokens"]) == len(c["logprobs"]) == len(c["versions"])
            assert c["finish_reason"] in ("stop", "length")
    assert all(len(c["tokens"]) <= 3 for c in rows[2]["completions"])
    assert not (tmp_path / "out.jsonl.tmp").exists()


@pytest.mark.parametrize("line,message", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"text": "x"}', "exactly one of"),
    ('{"prompt": "x", "prompt_ids": [1]}', "exactly one of"),
    ('{"prompt_ids": "abc"}', "prompt_ids must be a non-empty list of token ids, got a string"),
    ('{"prompt": "x", "sampling": {"temprature": 1}}', "temprature"),
    ('{"prompt": ""}', "prompt must be a non-empty string"),
    ('{"prompt_ids": [5], "sampling": {"top_p": 1.5}}', "top_p"),
])
def test_bad_line_names_file_and_line(ckpt: Path, tmp_path: Path, line: str, message: str) -> None:
    prompts = _write(tmp_path / "in.jsonl", [json.dumps({"prompt": "ok"}), line])
    args = _parse(["--model", str(ckpt), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                   "--no-progress"])
    with pytest.raises(FlowError, match=rf"in\.jsonl:2: .*{message}"):
        cli.main(args)
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_command_line_sampling_is_a_config_error(ckpt: Path, tmp_path: Path) -> None:
    prompts = _write(tmp_path / "in.jsonl", [json.dumps({"prompt": "ok"})])
    args = _parse(["--model", str(ckpt), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                   "--temperature", "-1"])
    with pytest.raises(ConfigError, match="temperature"):
        cli.main(args)


def test_prompts_is_an_alias_of_file(tmp_path: Path) -> None:
    a = _parse(["--model", "m", "--prompts", "p.jsonl"])
    b = _parse(["--model", "m", "--file", "p.jsonl", "--out", "o.jsonl"])
    assert a.file == b.file == Path("p.jsonl") and a.out is None and b.out == Path("o.jsonl")


# --- the installed entry point ----------------------------------------------------------------------------


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run([*flowlm_command(), "generate", *args], input=stdin,
                       stdin=None if stdin is not None else subprocess.DEVNULL, capture_output=True, text=True,
                       env=env, timeout=300)
    assert "Traceback" not in r.stdout and "Traceback" not in r.stderr, r.stderr
    return r


def _records(text: str) -> list[dict[str, Any]]:
    """Output rows without their timings (the only field that differs between two identical runs)."""
    return [{k: v for k, v in json.loads(line).items() if k != "timings"} for line in text.splitlines()]


def test_entry_point_stdout_out_and_stdin_agree(ckpt: Path, tmp_path: Path) -> None:
    prompts = _write(tmp_path / "in.jsonl", [json.dumps({"prompt": "def add(a, b):", "id": "a"}),
                                             json.dumps({"prompt_ids": [5, 6, 7], "id": "b"})])
    common = ["--model", str(ckpt), "--n", "2", "--max-new-tokens", "4", "--seed", "3"]
    r = _run([*common, "--file", str(prompts)])  # progress bar on: it must stay off stdout
    assert r.returncode == 0, r.stderr
    rows = _records(r.stdout)
    assert [x["id"] for x in rows] == ["a", "b"] and all(x["error"] is None for x in rows)
    assert all(len(c["tokens"]) <= 4 for x in rows for c in x["completions"])
    assert "generate: 2/2 requests done, 0 failed" in r.stderr

    out = tmp_path / "o" / "out.jsonl"
    r = _run([*common, "--prompts", str(prompts), "--out", str(out), "--no-progress"])
    assert r.returncode == 0 and r.stdout == ""
    assert r.stderr == f"generate: 2/2 requests done, 0 failed -> {out}\n"
    assert _records(out.read_text()) == rows  # same seed, same records, whichever way they are written
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]

    r = _run([*common, "--no-progress"], stdin=prompts.read_text())
    assert r.returncode == 0 and _records(r.stdout) == rows


def test_entry_point_logprobs_tempered_divides_by_the_row_temperature(ckpt: Path, tmp_path: Path) -> None:
    """`--logprobs tempered`: the same tokens as the default, each log-prob that of the logits divided by
    the row's temperature (a row's own `sampling.temperature` included), checked against the model."""
    import torch

    from flowlm.model.hf import load_native

    prompts = _write(tmp_path / "in.jsonl", [json.dumps({"prompt_ids": [5, 6, 7]}),
                                             json.dumps({"prompt_ids": [9, 4], "sampling": {"temperature": 1.8}})])
    common = ["--model", str(ckpt), "--file", str(prompts), "--max-new-tokens", "5", "--seed", "2",
              "--temperature", "0.5", "--no-progress"]
    raw, tempered = _run(common), _run([*common, "--logprobs", "tempered"])
    assert raw.returncode == 0 and tempered.returncode == 0, tempered.stderr
    model = load_native(ckpt)[0].eval()
    for a, b, t in zip(_records(raw.stdout), _records(tempered.stdout), (0.5, 1.8)):
        ca, cb = a["completions"][0], b["completions"][0]
        assert ca["tokens"] == cb["tokens"]
        seq = torch.tensor([b["prompt_ids"] + cb["tokens"]])
        with torch.no_grad():
            logits = model(seq[:, :-1]).float()[0, len(b["prompt_ids"]) - 1:]
        want = torch.log_softmax(logits / t, -1).gather(-1, torch.tensor(cb["tokens"])[:, None]).squeeze(-1)
        assert (torch.tensor(cb["logprobs"]) - want).abs().max() < 1e-4
        assert (torch.tensor(ca["logprobs"]) - want).abs().max() > 1e-2
    bad = _run([*common, "--logprobs", "processed"])
    assert bad.returncode == 2 and "invalid choice: 'processed'" in bad.stderr


def test_entry_point_errors_are_one_line(ckpt: Path, tmp_path: Path) -> None:
    prompts = _write(tmp_path / "in.jsonl", [json.dumps({"prompt": "ok"}), '{"text": "x"}'])
    out = tmp_path / "out.jsonl"
    r = _run(["--model", str(ckpt), "--file", str(prompts), "--out", str(out)])
    assert r.returncode == 1 and r.stdout == "" and not out.exists()
    assert r.stderr.startswith(f"error: {prompts}:2: a row needs exactly one of") and r.stderr.count("\n") == 1
    r = _run(["--model", str(ckpt), "--temperature", "-1"], stdin=json.dumps({"prompt": "ok"}) + "\n")
    assert r.returncode == 2 and r.stderr.startswith("error: generate: ") and "temperature" in r.stderr
    r = _run(["--model", str(tmp_path / "no_ckpt"), "--file", str(prompts.with_name("none.jsonl"))])
    assert r.returncode == 1 and r.stderr == f"error: {prompts.with_name('none.jsonl')}: file not found\n"
    r = _run(["--model", str(tmp_path / "no_ckpt"), "--file", "-"], stdin="")
    assert r.returncode == 1 and r.stderr == "error: <stdin>: no prompts\n"


def test_no_thinking_on_a_template_without_the_switch_is_a_config_error(tok, tmp_path: Path) -> None:
    """A checkpoint whose chat template ignores `enable_thinking` (ChatML, as many published ones):
    `--no-thinking` would sample the thinking-on prompts under the non-thinking label. `flowlm generate`,
    `flowlm eval` and `flowlm rl filter` say so in one line (exit 2); text prompts, which no template
    renders, still run."""
    import copy

    chatml = copy.deepcopy(tok)
    chatml.chat_template = ("{%- for m in messages -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}"
                            "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")
    ckpt = tmp_path / "chatml"
    save_pretrained(micro_model(vocab_size=len(tok)), chatml, ckpt)
    chat = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    common = ["--model", str(ckpt), "--max-new-tokens", "2", "--no-thinking"]
    r = _run(common, stdin=chat + "\n")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: --no-thinking: the chat template of") and "ignores enable_thinking" in r.stderr
    assert _run(common, stdin=json.dumps({"prompt": "hi"}) + "\n").returncode == 0
    r = subprocess.run([*flowlm_command(), "eval", "--model", str(ckpt), "--suite", "counting", "--max-items", "1",
                        "--max-new-tokens", "2", "--no-thinking", "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 2 and "--no-thinking" in r.stderr and "Traceback" not in r.stderr, r.stderr
    rows = _write(tmp_path / "rows.jsonl", [json.dumps({"messages": [{"role": "user", "content": "1+1?"}],
                                                        "dataset": "math", "ground_truth": "2"})])
    r = subprocess.run([*flowlm_command(), "rl", "filter", "--model", str(ckpt), "--file", str(rows), "-k", "2",
                        "--set", "max_new_tokens=2", "--set", "thinking=false"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: thinking=false: the chat template"), r.stderr


def test_entry_point_chat_replies_stop_at_the_end_of_their_turn(tok, tmp_path: Path) -> None:
    """A `messages` row's reply ends at `<|im_end|>` through the CLI too (it hands the engine token ids, so
    the stop must travel with them; until 2026-12-07 CLI replies ran on to `--max-new-tokens`), while a
    `prompt_ids` row runs past it."""
    model, im_end = end_of_turn_model(tok)
    chat = [{"role": "user", "content": "hi"}]
    save_pretrained(model, tok, tmp_path / "ckpt")
    rows = _write(tmp_path / "in.jsonl", [json.dumps({"messages": chat}), json.dumps({"prompt_ids": [5, 6, 7]})])
    r = _run(["--model", str(tmp_path / "ckpt"), "--file", str(rows), "--temperature", "0", "--max-new-tokens", "6",
              "--no-progress"])
    replies = [x["completions"][0] for x in _records(r.stdout)]
    assert replies[0]["tokens"] == [im_end] and replies[0]["finish_reason"] == "stop"
    assert len(replies[1]["tokens"]) == 6
