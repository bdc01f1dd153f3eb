"""Distribution applied from outside the model: process-group set-up, FSDP2 sharding, optional compile.

The model code knows nothing of this file. `parallelize` wraps each decoder layer, then the root, with
`torch.distributed.fsdp.fully_shard` (FSDP2) when more than one process runs (torchrun), and compiles each
layer when asked. Works on CPU with gloo (tests) and on CUDA with NCCL.
"""

from __future__ import annotations

import datetime
import os
import shutil
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from flowlm.errors import ConfigError, FlowError

TIMEOUT_ENV = "FLOWLM_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 7200.0  # how long a rank waits for the others (an artifact stage on rank 0 included)


def dist_timeout() -> float:
    """Seconds a collective (a barrier above all) waits for every rank: `$FLOWLM_DIST_TIMEOUT`, else 2 h."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: must be positive")
    return value


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world() -> World:
    """Join the torchrun process group if the environment names one; otherwise a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=dist_timeout()))
    rank = dist.get_rank() if dist.is_initialized() else 0
    return World(rank=rank, size=size, local_rank=local_rank, device=device)


def parallelize(model: nn.Module, world: World, *, compile: bool = False, bf16: bool = False) -> nn.Module:
    """Shard `model` with FSDP2 over all ranks (per decoder layer, then the root) and optionally compile.

    With bf16, FSDP2's mixed precision keeps fp32 master weights and reduces gradients in fp32 (the
    OLMo 3 setting); single-process bf16 uses autocast in the engine instead.
    """
    layers = _decoder_layers(model)
    if compile:
        if world.device.type == "cpu":
            require_cxx()
        for i, layer in enumerate(layers):
            layers[i] = torch.compile(layer)  # type: ignore[assignment]
    if not (world.distributed or dist.is_initialized()):
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    # One rank holds every shard anyway: keep the gathered (bf16) parameters from forward to backward
    # instead of casting and gathering them again.
    reshard = dist.get_world_size() > 1
    for layer in layers:
        fully_shard(layer, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(model, mp_policy=mp, reshard_after_forward=reshard)
    return model


def require_cxx() -> None:
    """Fail now, in one line, where torch.compile on CPU would fail at the first step: inductor
    builds its CPU kernels with a C++ compiler (`$CXX`, else g++ / clang++ / c++ on PATH)."""
    cxx = os.environ.get("CXX")
    if not (shutil.which(cxx) if cxx else any(shutil.which(c) for c in ("g++", "clang++", "c++"))):
        raise ConfigError("compile: true on CPU needs a C++ compiler for torch.compile's kernels "
                           f"({'CXX=' + cxx + ' is not on PATH' if cxx else 'no g++, clang++ or c++ on PATH'}); "
                           "install one (e.g. apt-get install g++) or set compile: false")


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers: `model.model.layers` (native OLMo-3, HF causal LMs) or, for a model wrapped by
    `flowlm.model.adapter.HFCausalLM`, the wrapped model's base model's `layers`."""
    candidates = [getattr(model, "model", model)]
    hf = getattr(model, "hf", None)
    if hf is not None:
        candidates.append(getattr(hf, getattr(hf, "base_model_prefix", "model"), hf))
    for inner in candidates:
        layers = getattr(inner, "layers", None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise TypeError(f"{type(model).__name__} has no decoder-layer ModuleList (.model.layers) to shard or compile")


def all_reduce_sum(value: float, world: World) -> float:
    """Sum a Python number over ranks (identity in one process)."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=world.device if world.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item())


def barrier(world: World, where: str = "") -> None:
    """Wait for every rank; a rank that does not arrive within `dist_timeout()` is a one-line FlowError."""
    if not world.distributed:
        return
    try:
        dist.barrier()
    except (RuntimeError, dist.DistError) as exc:  # gloo: RuntimeError on timeout; a dead peer: DistError
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise FlowError(f"rank {world.rank} of {world.size}: the other ranks did not reach {where or 'a barrier'} "
                        f"within {dist_timeout():.0f} s (a rank died or hangs; {TIMEOUT_ENV} sets the limit): "
                        f"{reason}") from None
