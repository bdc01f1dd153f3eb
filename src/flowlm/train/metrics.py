"""Metric sinks for the engine: JSONL (always), TensorBoard (when installed), and a rich progress bar.

Also the throughput arithmetic: tokens/s and model FLOPs utilisation against the device's peak.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peaks (no sparsity), by substring of the CUDA device name.
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def peak_flops(device: torch.device, precision: str = "fp32") -> float:
    """Peak FLOP/s of `device` for MFU. `FLOWLM_PEAK_FLOPS` overrides.

    CPU: cores x clock x FLOPs/cycle (AVX-512: 2 FMA units x 16 fp32 lanes x 2 = 64; AVX2: 32). On our
    2-core 2.5 GHz AVX-512 machine that is 320 GFLOP/s; a measured 2048^3 matmul reaches ~233 GFLOP/s
    (shared/reference/cpu-probes.md).
    """
    env = os.environ.get("FLOWLM_PEAK_FLOPS")
    if env:
        return float(env)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in GPU_PEAK_BF16.items():
            if key in name:
                return val if precision == "bf16" else val / 2
        return 100e12
    cores = torch.get_num_threads()
    flags, ghz = _cpu_flags_and_ghz()
    per_cycle = 64 if "avx512f" in flags else 32 if "avx2" in flags else 16
    return cores * ghz * 1e9 * per_cycle


def _cpu_flags_and_ghz() -> tuple[set[str], float]:
    flags: set[str] = set()
    ghz = 2.5
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return flags, ghz
    for line in text.splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("model name") and "GHz" in line:
            try:
                ghz = float(line.rsplit("@", 1)[1].strip().replace("GHz", ""))
            except (IndexError, ValueError):
                pass
    return flags, ghz


def finite_or_null(value: Any) -> Any:
    """`value` with every non-finite float (NaN, ±inf), at any depth of dicts and lists, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


class MetricsLogger:
    """Writes one JSON object per logged step to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, out_dir: Path, enabled: bool = True, resume: bool = False) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:  # tensorboard is an optional extra
            self._tb = None

    def log(self, record: dict[str, Any]) -> None:
        """Append `record` as one line of strict JSON: a non-finite number (an RL step with no informative
        group has no entropy; a skipped step's loss) is written as null, never as `NaN`, which `jq`,
        JavaScript and most JSON readers reject. TensorBoard gets the values as they are."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(finite_or_null(record), allow_nan=False) + "\n")
        if self._tb is not None:
            step = int(record.get("step", 0))
            for key, val in record.items():
                if isinstance(val, (int, float)) and key != "step":
                    self._tb.add_scalar(key, val, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop records of steps after the checkpoint (they will be recomputed)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
        self.path.write_text("".join(ln + "\n" for ln in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def make_progress(enabled: bool):  # -> rich.progress.Progress
    """A rich progress bar (step, loss, tokens/s, ETA); silent when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:,.0f} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and sys.stderr.isatty()),
        transient=False,
    )
