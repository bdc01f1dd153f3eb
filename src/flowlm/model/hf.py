"""Hugging Face interop for the native model: config conversion, checkpoint save and load.

A flowlm checkpoint is a directory loadable as `transformers.Olmo3ForCausalLM`:
`model.safetensors` + `config.json` (+ tokenizer files) + `flowlm.json` (the native `ModelConfig` and
free-form metadata, see `checkpoint_meta`). It is written with `flowlm.atomic.atomic_dir`, so a reader
sees either the old checkpoint or the complete new one.

RoPE parameters: transformers 5.x stores `rope_parameters`. Versions with the fix of
transformers#45945 (e.g. 5.23) key it by layer type and apply YaRN to full layers only, as OLMo 3
intends; older 5.x (e.g. 5.17) hold one flat dict and apply it to *every* layer. `to_hf_config` writes
whichever form the installed version reads; `from_hf_config` reads both, plus the legacy
`rope_theta` / `rope_scaling` keys. `flowlm.json` carries the exact native config either way.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flowlm.atomic import atomic_dir
from flowlm.errors import ConfigError, FlowError
from flowlm.model.config import FULL, SLIDING, ModelConfig, YarnConfig
from flowlm.model.olmo3 import Olmo3

FLOWLM_META = "flowlm.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


@functools.cache
def rope_params_by_layer_type() -> bool:
    """True when the installed `Olmo3Config` keys `rope_parameters` by layer type (transformers#45945)."""
    from transformers import Olmo3Config

    return FULL in (Olmo3Config().rope_parameters or {})


def _rope_dict(cfg: ModelConfig, yarn: YarnConfig | None) -> dict[str, Any]:
    if yarn is None:
        return {"rope_type": "default", "rope_theta": cfg.rope_theta}
    return {"rope_type": "yarn", "rope_theta": cfg.rope_theta, "factor": yarn.factor,
            "beta_fast": yarn.beta_fast, "beta_slow": yarn.beta_slow,
            "original_max_position_embeddings": yarn.original_max_seq_len}


def to_hf_config(cfg: ModelConfig, **overrides: Any) -> Any:
    """`transformers.Olmo3Config` equivalent to `cfg` (`overrides` e.g. eos/pad token ids)."""
    from transformers import Olmo3Config

    if rope_params_by_layer_type():
        rope = {SLIDING: _rope_dict(cfg, None), FULL: _rope_dict(cfg, cfg.yarn)}
    else:  # flat form: applied to every layer by this transformers version (transformers#45945)
        rope = _rope_dict(cfg, cfg.yarn)
    kwargs: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.rms_norm_eps, sliding_window=cfg.sliding_window,
        layer_types=list(cfg.layer_types), tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std, rope_parameters=rope, attention_bias=False, hidden_act="silu",
        pad_token_id=None, bos_token_id=None, eos_token_id=None, architectures=["Olmo3ForCausalLM"],
    )
    kwargs.update(overrides)
    return Olmo3Config(**kwargs)


def _swa_pattern(layer_types: list[str], window: int | None) -> tuple[bool, ...]:
    """Shortest repeating pattern reproducing `layer_types` under ModelConfig's last-layer-full rule."""
    if window is None or SLIDING not in layer_types:
        return (False,)
    if layer_types[-1] != FULL:
        raise ConfigError("config.json: layer_types must end with a full_attention layer")
    for period in range(1, len(layer_types) + 1):
        pattern = tuple(t == SLIDING for t in layer_types[:period])
        rebuilt = [SLIDING if pattern[i % period] else FULL for i in range(len(layer_types) - 1)] + [FULL]
        if rebuilt == list(layer_types):
            return pattern
    raise ConfigError("config.json: layer_types is not a repeating pattern")  # unreachable in practice


def _yarn_from(params: dict[str, Any] | None) -> YarnConfig | None:
    if not params or params.get("rope_type", params.get("type", "default")) == "default":
        return None
    if params.get("rope_type", params.get("type")) != "yarn":
        raise ConfigError(f"config.json: rope type {params.get('rope_type')!r} is not supported (default/yarn)")
    return YarnConfig(factor=float(params["factor"]), beta_fast=float(params.get("beta_fast") or 32),
                      beta_slow=float(params.get("beta_slow") or 1),
                      original_max_seq_len=int(params["original_max_position_embeddings"]))


def _rope_from(hf: dict[str, Any]) -> tuple[float, YarnConfig | None]:
    """(theta, yarn) from nested or flat `rope_parameters`, or legacy `rope_theta`/`rope_scaling`."""
    params = hf.get("rope_parameters")
    if params and FULL in params:
        if _yarn_from(params.get(SLIDING)) is not None:
            raise ConfigError("config.json: YaRN on sliding layers is not an OLMo 3 layout")
        full = params[FULL] or {}
        theta = full.get("rope_theta", hf.get("rope_theta", 500_000.0))
        return float(theta), _yarn_from(full)
    if params:  # flat
        return float(params.get("rope_theta", hf.get("rope_theta", 500_000.0))), _yarn_from(params)
    return float(hf.get("rope_theta", 500_000.0)), _yarn_from(hf.get("rope_scaling"))


def from_hf_config(hf_cfg: Any) -> ModelConfig:
    """Native `ModelConfig` from an `Olmo3Config` (or its dict). Unsupported variants raise ConfigError."""
    hf = hf_cfg if isinstance(hf_cfg, dict) else hf_cfg.to_dict()
    if hf.get("model_type") != "olmo3":
        raise ConfigError(f"config.json: model_type {hf.get('model_type')!r} is not olmo3")
    if hf.get("attention_bias") or hf.get("hidden_act", "silu") != "silu":
        raise ConfigError("config.json: attention_bias / non-silu activation are not OLMo 3")
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    if hf.get("head_dim") not in (None, hidden // heads):
        raise ConfigError(f"config.json: head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    layers = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types") or [SLIDING if (i + 1) % 4 else FULL for i in range(layers)]
    window = hf.get("sliding_window")
    theta, yarn = _rope_from(hf)
    return ModelConfig(
        vocab_size=hf["vocab_size"], hidden_size=hidden, num_layers=layers, num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads, intermediate_size=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"], rope_theta=theta, rms_norm_eps=hf["rms_norm_eps"],
        sliding_window=window or hf["max_position_embeddings"],
        swa_pattern=_swa_pattern(list(layer_types), window), yarn=yarn,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=hf.get("initializer_range", 0.02))


def checkpoint_meta(model_config: dict[str, Any] | None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Contents of `flowlm.json`: the native `ModelConfig` as a dict (None for a non-native model) and
    free-form metadata."""
    return {"format": "flowlm-checkpoint", "version": 1, "model_config": model_config, "meta": meta or {}}


def write_json(path: Path, obj: Any) -> None:
    """Pretty, key-sorted JSON with a trailing newline."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _token_ids(tokenizer: Any) -> dict[str, Any]:
    if tokenizer is None:
        return {}
    return {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def save_pretrained(model: Olmo3, tokenizer: Any, out_dir: str | os.PathLike[str],
                    extra_meta: dict[str, Any] | None = None) -> Path:
    """Write `model` (+ `tokenizer` when not None) as an HF-loadable checkpoint, atomically."""
    cfg = model.cfg
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:  # HF re-ties on load; safetensors refuses shared storage
        state.pop("lm_head.weight", None)
    dtype = next(iter(state.values())).dtype
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        hf_cfg = to_hf_config(cfg, **_token_ids(tokenizer))
        hf_cfg.dtype = str(dtype).removeprefix("torch.")
        hf_cfg.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / FLOWLM_META, checkpoint_meta(cfg.to_dict(), extra_meta))
    return Path(out_dir)


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON file; missing or corrupt files raise a one-line FlowError naming it."""
    if not path.is_file():
        raise FlowError(f"{path}: missing (not a complete checkpoint directory)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FlowError(f"{path}: corrupt JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None


def checkpoint_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Native config of a flowlm or HF Olmo3 checkpoint directory (flowlm.json preferred)."""
    root = Path(path)
    if (root / FLOWLM_META).is_file():
        native = read_json(root / FLOWLM_META).get("model_config")
        if native is not None:
            try:
                return ModelConfig.from_dict(native)
            except ConfigError as exc:
                raise FlowError(f"{root / FLOWLM_META}: {exc}") from None
    try:
        return from_hf_config(read_json(root / "config.json"))
    except ConfigError as exc:
        raise FlowError(f"{root}: {exc}") from None


def load_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a single-file or sharded safetensors checkpoint (CPU)."""
    root = Path(path)
    if (root / WEIGHTS_INDEX).is_file():
        files = sorted(set(read_json(root / WEIGHTS_INDEX)["weight_map"].values()))
    elif (root / WEIGHTS).is_file():
        files = [WEIGHTS]
    else:
        raise FlowError(f"{root / WEIGHTS}: missing (no safetensors weights in checkpoint)")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            state.update(load_file(str(root / name)))
        except (SafetensorError, OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise FlowError(f"{root / name}: corrupt or truncated safetensors ({reason})") from None
    return state


def load_native(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None) -> tuple[Olmo3, ModelConfig]:
    """Load a flowlm or HF Olmo3 checkpoint into a native `Olmo3` (weights keep their dtype unless
    `dtype` is given). Missing/corrupt files and shape mismatches raise one-line FlowErrors."""
    root = Path(path)
    cfg = checkpoint_config(root)
    state = load_state(root)
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = Olmo3(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise FlowError(f"{root / WEIGHTS}: tensors do not match the config "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise FlowError(f"{root / WEIGHTS}: {key} has shape {tuple(state[key].shape)}, "
                            f"config expects {tuple(shape)}")
    state = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=not cfg.tie_embeddings, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model, cfg
