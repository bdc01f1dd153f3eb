"""`benchmarks/gpu_check.sh`'s scale-out commands (#17: the 1B preset under torchrun/FSDP2 with its BPB eval)
run here as written, with the tiny preset, 2 steps and 2 CPU ranks (gloo) instead of the 1B preset, 8 steps
and one rank per GPU: a command that is wrong fails here, not in the few minutes a lent GPU gives."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
MARK = "# #17:"


def scaleout_commands() -> tuple[dict[str, str], list[str]]:
    """The script's shell variables set after the #17 marker, and its commands there (continued lines joined)."""
    lines = SCRIPT.read_text().split(MARK, 1)[1].splitlines()[1:]
    joined, buf = [], ""
    for line in lines:
        buf += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            joined.append(buf.strip())
            buf = ""
    variables = {}
    commands = []
    for cmd in filter(None, joined):
        name, eq, value = cmd.partition("=")
        if eq and name.isidentifier() and " " not in name:
            variables[name] = value.strip('"')
        else:
            commands.append(cmd)
    return variables, commands


def test_the_scripts_scaleout_part_is_two_commands_on_the_1b_preset():
    variables, commands = scaleout_commands()
    assert list(variables) == ["small"] and len(commands) == 2
    assert commands[0].startswith("python3 -m flowlm.cli train tiny") and "--stage tokenizer" in commands[0]
    assert commands[1].startswith('torchrun --nproc_per_node "$(nvidia-smi -L | wc -l)"')
    assert "model.preset=1b" in commands[1] and "--stage pretrain" in commands[1]


@pytest.mark.distributed
def test_the_scripts_scaleout_commands_run_on_two_cpu_ranks_with_the_tiny_preset(tmp_path: Path):
    variables, commands = scaleout_commands()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "out": str(tmp_path), "OMP_NUM_THREADS": "1", "PET_MASTER_PORT": str(port),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    env.update(variables)
    # less data, a smaller vocabulary and the closing BPB eval on 2 items: the commands as written, at a CPU
    # smoke size (their data and eval defaults took ~2 minutes of CI)
    env["small"] = ("stages.corpus.pretrain_bytes=60000 stages.corpus.midtrain_bytes=20000 "
                    "stages.tokenizer.train_bytes=60000 stages.tokenizer.vocab_size=1024")
    for cmd in commands:
        cmd = (cmd.replace('"$(nvidia-smi -L | wc -l)"', "2").replace("model.preset=1b", "model.preset=tiny")
               .replace("stages.pretrain.steps=8", "stages.pretrain.steps=2").replace("python3 ", f"{sys.executable} "))
        if cmd.startswith("torchrun"):
            cmd = cmd.replace(" $small ", " $small eval.max_items=2 eval.heldout_docs=1 'eval.tasks=[prose]' ")
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=SCRIPT.parents[1], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-3000:])
    log = (tmp_path / "fsdp1b.txt").read_text()
    assert "BPB by stage" in log and "pretrain" in log
    stages = json.loads((tmp_path / "run1b" / "flow.json").read_text())["stages"]
    assert stages["pretrain"]["status"] == "done"
    assert stages["pretrain"]["config"]["steps"] == 2
