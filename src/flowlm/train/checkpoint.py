"""Atomic, exactly-resumable training checkpoints that are also Hugging Face model directories.

Layout of `<stage>/checkpoints/step_000050/`:
    model.safetensors, config.json (+ tokenizer files)   loadable by `AutoModelForCausalLM`
    optimizer.pt                                         full (unsharded) AdamW state
    trainer.pt                                           step, loader position, RNG states
    checkpoint.json                                      manifest, written last: step + file sizes
                                                         (+ aliases: tied tensors, stored once)

A checkpoint is written into a temporary sibling directory and renamed into place
(`flowlm.atomic.atomic_dir`; the manifest and both directories are fsynced), so a crash (even
`kill -9`) leaves either the previous checkpoints or a complete new one. A directory without a valid
manifest, or whose files do not match it, is reported as half-written and never loaded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from flowlm.atomic import atomic_dir
from flowlm.errors import FlowError

MANIFEST = "checkpoint.json"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:07d}"


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """Unsharded, CPU copies of the model and optimizer state (collective under FSDP2: call on all ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, msd: dict, osd: dict | None) -> None:
    """Inverse of `full_state`: load unsharded state into a (possibly sharded) model and optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, msd, options=opts)
    if optimizer is not None and osd is not None:
        set_optimizer_state_dict(model, optimizer, osd, options=opts)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(
    root: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optim_state: dict | None,
    trainer_state: dict[str, Any],
    write_config: Any,
) -> Path:
    """Write checkpoint `step` under `root` atomically; `write_config(dir)` adds config/tokenizer files."""
    final = step_dir(root, step)
    tensors, aliases = _split_aliases(model_state)
    with atomic_dir(final) as tmp:  # a re-save of the same step replaces the old copy
        # (one metadata key: safetensors writes several in an unstable order, and the bytes must not vary)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_config(tmp)
        if optim_state is not None:
            torch.save(optim_state, tmp / "optimizer.pt")
        torch.save(trainer_state, tmp / "trainer.pt")
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        _write_json(tmp / MANIFEST, {"step": step, "files": files, **({"aliases": aliases} if aliases else {})})
        _fsync_dir(tmp)
    _fsync_dir(root)
    return final


def _split_aliases(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store a tensor shared under several names (tied embeddings: `lm_head.weight` is
    `model.embed_tokens.weight`) once: (tensors to write, {alias: stored name})."""
    stored: dict[tuple, str] = {}
    tensors, aliases = {}, {}
    for name, t in state.items():
        view = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and view in stored:  # (empty tensors may all report data_ptr 0)
            aliases[name] = stored[view]
            continue
        stored[view] = name
        tensors[name] = t.contiguous()
    return tensors, aliases


def validate_checkpoint(path: Path) -> dict[str, Any]:
    """Return the manifest if `path` is a complete checkpoint; raise a one-line FlowError otherwise."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise FlowError(f"{path}: half-written or foreign checkpoint (no {MANIFEST})")
    try:
        meta = json.loads(manifest.read_text())
        files = meta["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise FlowError(f"{manifest}: corrupt checkpoint manifest") from None
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            raise FlowError(f"{f}: missing from checkpoint")
        if f.stat().st_size != size:
            raise FlowError(f"{f}: size {f.stat().st_size} does not match the manifest ({size}); corrupt checkpoint")
    return meta


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (half-written ones are skipped)."""
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.glob("step_*")):
        try:
            validate_checkpoint(p)
        except FlowError:
            continue
        out.append(p)
    return out


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict | None, dict[str, Any]]:
    """Read (model state, optimizer state, trainer state) of a validated checkpoint."""
    aliases = validate_checkpoint(path).get("aliases", {})
    if not isinstance(aliases, dict):
        raise FlowError(f"{path / MANIFEST}: corrupt checkpoint manifest (aliases is not a mapping)")
    try:
        msd = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise FlowError(f"{path / 'model.safetensors'}: unreadable ({exc})") from None
    for alias, name in aliases.items():  # one tensor again under every name it was saved under
        if name not in msd:
            raise FlowError(f"{path / MANIFEST}: alias {alias} names tensor {name}, not in model.safetensors")
        msd[alias] = msd[name]
    osd = None
    if (path / "optimizer.pt").is_file():
        osd = _torch_load(path / "optimizer.pt")
    tsd = _torch_load(path / "trainer.pt")
    return msd, osd, tsd


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and stale temporary directories."""
    for tmp in root.glob(".tmp-step_*"):
        shutil.rmtree(tmp, ignore_errors=True)
    ckpts = list_checkpoints(root)
    for old in ckpts[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise FlowError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
