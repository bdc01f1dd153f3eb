"""Direct preference optimisation with reference log-probabilities computed once and cached on disk.

Batches come from `flowlm.data.pairs.PairDataset(..., with_index=True)`: `chosen_*`, `rejected_*` and
`pair_index`. The reference model never sits beside the policy during training. Before training,
`precompute_reference(dataset, cache_dir)` runs the reference over every pair once (open-instruct's
`dpo_tune_cache.py` does the same, then frees the reference) and stores the summed answer-token
log-probabilities per pair in `<cache_dir>/dpo_ref_logps-<key>.pt`. The key hashes the reference
weights (the checkpoint's weight files for `reference: <path>`; the policy's initial parameters for
`reference: null`), the pair data with its tokenizer hash and truncation (`PairDataset.fingerprint`),
so a changed reference or data set is recomputed and an unchanged one is read back. Sums are stored
and the length normalisation of `dpo_norm` applied at loss time, so both loss types share a cache.

The loss math is `flowlm.train.post_losses.dpo_loss`; the unit is a pair. Policy and reference log-
probabilities come from one forward over the micro-batch's 2P sequences (`pair_logps`): on native models
each pair's prompt computed once for both answers (`shared_prefix`, `flowlm.model.tree`), otherwise
packed into rows with intra-document masking; never 2P rows padded to the longest.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field, model_validator
from torch import nn

from flowlm.atomic import replacing
from flowlm.data.pairs import causal_lengths, pack_rows, packed_row_len, pair_rows
from flowlm.errors import FlowError
from flowlm.train.objectives.base import LossOutput, Mean, Objective, ObjectiveConfig, register_objective
from flowlm.train.parallel import World, barrier
from flowlm.train.post_losses import REFERENCE_FREE, dpo_loss, head_weight, sequence_logps, through_head

CACHE_FORMAT = "flowlm.dpo_ref_logps/1"
# Row length at which attention over a packed row costs as much as the rest of a layer, per unit of hidden
# size (`flowlm.data.pairs.packed_row_len`): 8 by FLOPs for a 4 x MLP; 4-8 x 256 measured alike on the CPU.
ATTENTION_TOKENS_PER_DIM = 8
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth")


class DPOConfig(ObjectiveConfig):
    """DPO. OLMo 3 Think DPO: `dpo_norm` with β = 5 (open-instruct's current default); `dpo` with β = 0.1
    is the original paper's (and TRL's) setting. β has no default on purpose: the two differ by 50x.
    The other preference losses of `flowlm.train.post_losses.DPO_LOSSES` (IPO, hinge, robust, APO, SimPO,
    ...) are a `loss_type` each; `simpo` and `orpo` need no reference, so none is computed."""

    name: Literal["dpo"] = "dpo"
    beta: float = Field(gt=0, description="strength of the implicit KL penalty (0.1 for dpo, 5 for dpo_norm)")
    loss_type: Literal["dpo", "dpo_norm", "ipo", "hinge", "robust", "exo_pair", "bco_pair", "nca_pair", "sppo_hard",
                       "apo_zero", "apo_down", "discopop", "simpo", "orpo"] = Field(
        "dpo_norm", description="dpo: summed log-ratios (TRL sigmoid); dpo_norm: per-token averaged (TRL sigmoid_norm); "
                                "the rest as TRL's namesakes (simpo: CPOTrainer's, orpo: ORPOTrainer's; both "
                                "reference-free)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="robust: label flip probability (< 0.5); exo_pair "
                                                                "and simpo: label smoothing ε")
    discopop_tau: float = Field(0.05, gt=0, description="discopop: the blend's temperature")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: the target reward margin γ")
    sft_weight: float = Field(0.0, ge=0, description="weight of the chosen answers' NLL added to the loss (RPO)")
    reference: str | None = Field(None, description="reference checkpoint directory; null = the initial policy")
    reference_batch_size: int = Field(8, gt=0, description="pairs per forward when precomputing reference log-probs")
    pack_length: int | None = Field(
        None, ge=2, description="tokens per packed row of a micro-batch's sequences (at least its longest); "
                                "null = chosen per micro-batch (flowlm.data.pairs.packed_row_len)")
    shared_prefix: bool = Field(
        True, description="compute each pair's prompt once for both answers (flowlm.model.tree; native "
                          "models); false: the two sequences packed separately")

    @model_validator(mode="after")
    def _loss_options(self) -> "DPOConfig":
        if self.loss_type in REFERENCE_FREE and self.reference is not None:
            raise ValueError(f"loss_type {self.loss_type} uses no reference model: remove reference")
        if self.loss_type == "robust" and self.label_smoothing >= 0.5:
            raise ValueError("robust: label_smoothing is a flip probability below 0.5")
        if self.loss_type == "exo_pair" and self.label_smoothing <= 0:
            raise ValueError("exo_pair: label_smoothing must be above 0 (the paper uses 1e-3)")
        return self


def weights_hash(model: nn.Module) -> str:
    """Hash of a model's parameters and buffers (names without the adapter's prefix, dtypes, shapes, bytes).

    Under FSDP2 each sharded tensor is gathered (a collective: every rank calls this)."""
    h = hashlib.blake2b(digest_size=16)
    prefix = getattr(model, "checkpoint_prefix", "")
    for name, t in sorted(model.state_dict().items()):
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name.removeprefix(prefix)} {t.dtype} {t.numel()}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def files_hash(path: Path) -> str:
    """Hash of a checkpoint directory's `config.json` and weight files (names and bytes)."""
    from flowlm.flow.record import sha256_files

    files = [p for p in path.rglob("*") if p.is_file() and (p.suffix in WEIGHT_FILES or p.name == "config.json")]
    if not any(p.suffix in WEIGHT_FILES for p in files):
        raise FlowError(f"{path}: no weight files to use as the DPO reference")
    return sha256_files(files, path)


def packing_window(model: nn.Module) -> int | None:
    """The longest packed row that computes exactly what unpacked rows do; None: any length.

    The native `Olmo3` masks documents inside its sliding windows. `HFCausalLM` hands the wrapped model
    one 4-D document mask that replaces its own masks, sliding ones included
    (`flowlm.model.adapter`): a row no longer than the window never reaches it."""
    hf = getattr(model, "hf", None)
    cfg = getattr(hf, "config", None)
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if not window or (types is not None and "sliding_attention" not in types):
        return None
    return int(window)


def pack_plan(model: nn.Module, labels: torch.Tensor, pack_length: int | None) -> tuple[list[int], int] | None:
    """`(lengths, row_len)` to pack the rows of `labels` for `model` (`flowlm.data.pairs.pack_rows`), or
    None when a sequence is longer than `packing_window(model)`. `row_len`: `pack_length` (within the
    window), else `packed_row_len` for the model's hidden size (the LM head's), else the longest."""
    window = packing_window(model)
    lengths = causal_lengths(labels)
    if window is not None and max(lengths) > window:
        return None
    if pack_length is not None:
        return lengths, pack_length if window is None else min(pack_length, window)
    weight = head_weight(model)
    if weight is None:
        return lengths, max(lengths)
    return lengths, packed_row_len(lengths, ATTENTION_TOKENS_PER_DIM * weight.shape[1], limit=window)


def pair_logps(model: nn.Module, batch: Mapping[str, torch.Tensor], *, pack: bool = True,
               pack_length: int | None = None, shared_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probabilities and answer lengths `[2P]` (chosen rows, then rejected), one forward.

    `shared_prefix` (models with `supports_tree`): each pair's common prefix, its prompt, is computed once
    and both answers attend to it (`flowlm.model.tree`), all pairs in one flat row without padding.
    Otherwise `pack`: the 2P sequences, each cut after its last answer token, go packed into rows
    (`pack_plan`), attention confined to each sequence; else, or when `pack_plan` says no, as 2P rows
    right-padded to the longest. The same numbers every way (to float rounding; tested): a causal
    model's log-probabilities at the answer tokens depend on no later token and on no other sequence."""
    ids, labels = pair_rows(batch, pad_id=0)
    if shared_prefix and getattr(model, "supports_tree", False):
        from flowlm.model.tree import share_prefixes

        P = ids.shape[0] // 2
        shared = share_prefixes(ids, labels, causal_lengths(labels), [[i, P + i] for i in range(P)])
        return through_head(model, shared.input_ids, lambda x, w: sequence_logps(
            x, shared.labels, w, segments=shared.row[None], n_segments=2 * P), tree=shared.tree)
    plan = pack_plan(model, labels, pack_length) if pack else None
    if plan is None:
        return through_head(model, ids, lambda x, w: sequence_logps(x, labels, w))
    rows = pack_rows(ids, labels, *plan)
    return through_head(model, rows.input_ids, lambda x, w: sequence_logps(
        x, rows.labels, w, segments=rows.sequence, n_segments=labels.shape[0]),
        position_ids=rows.position_ids, doc_ids=rows.doc_ids)


@register_objective
class DPOObjective(Objective):
    """DPO over pairs. Metrics (Means over pairs): `reward_accuracy`, `chosen_reward`, `rejected_reward`,
    `reward_margin` (rewards as the loss sees them, see `dpo_loss`), `chosen_logp`, `rejected_logp`."""

    name = "dpo"
    Config = DPOConfig
    unit = "pairs"
    data_kind = "pairs"
    default_epochs = 1  # OLMo 3 DPO: 1 epoch
    cfg: DPOConfig

    def __init__(self, cfg: DPOConfig | None = None, **fields: Any) -> None:
        super().__init__(cfg, **fields)
        self._model: nn.Module | None = None
        self._world = World()
        self._initial_hash: str | None = None  # reference: null -> the policy's weights at setup
        self._ref: dict[str, torch.Tensor] | None = None
        self._key: str | None = None
        self._expected_key: str | None = None  # from a checkpoint: the cache this run trained with

    # -- reference ----------------------------------------------------------------------------------
    def setup(self, model: nn.Module, world: Any) -> None:
        self._model, self._world = model, world
        if self.cfg.reference is None:
            self._initial_hash = weights_hash(model)

    def reference_key(self, dataset: Any, model: nn.Module | None = None) -> str:
        """The cache key for `dataset` (reference weights + `dataset.fingerprint()`)."""
        if self.cfg.reference is not None:
            ref = files_hash(Path(self.cfg.reference))
        else:
            ref = self._initial_hash or weights_hash(self._need_model(model))
        blob = json.dumps({"format": CACHE_FORMAT, "reference": ref, "data": dataset.fingerprint()}, sort_keys=True)
        return hashlib.blake2b(blob.encode(), digest_size=10).hexdigest()

    def precompute_reference(self, data: Any, cache_dir: str | Path, *, model: nn.Module | None = None,
                             world: World | None = None) -> Path | None:
        """Reference log-probabilities of every pair of `data` (a `PairDataset` or a loader over one),
        read from `cache_dir` or computed once and written there. Call before training; with
        `reference: null` the model given here or to `setup` must still hold its initial weights when
        the cache has to be computed. Under torchrun every rank calls it (ranks split the pairs).
        A reference-free loss (`simpo`, `orpo`) needs none: nothing is computed, and None is returned."""
        if self.cfg.loss_type in REFERENCE_FREE:
            return None
        dataset = getattr(data, "dataset", data)
        world = world or self._world
        fresh = model is not None and self._initial_hash is None and self.cfg.reference is None
        if fresh:  # hashed just now: the model is at the weights the key names
            self._initial_hash = weights_hash(model)
        key = self.reference_key(dataset, model)
        if self._expected_key is not None and key != self._expected_key:
            raise FlowError(f"dpo: the reference or the pair data changed since the checkpoint being resumed "
                            f"(cache key {key}, checkpoint trained with {self._expected_key})")
        path = Path(cache_dir) / f"dpo_ref_logps-{key}.pt"
        if not path.exists():
            chosen, rejected = self._compute(dataset, model, world, check_initial=not fresh)
            if world.is_main:
                with replacing(path) as tmp:
                    torch.save({"format": CACHE_FORMAT, "key": key, "chosen": chosen, "rejected": rejected}, tmp)
            barrier(world)
        cache = torch.load(path, map_location="cpu", weights_only=True)
        if cache.get("format") != CACHE_FORMAT or len(cache["chosen"]) != len(dataset):
            raise FlowError(f"{path}: not a reference cache for these {len(dataset)} pairs")
        # on the training device (4 bytes per pair and side): the lookup per micro-batch needs no host sync
        self._ref = {side: cache[side].to(world.device) for side in ("chosen", "rejected")}
        self._key = key
        return path

    def _compute(self, dataset: Any, model: nn.Module | None, world: World,
                 check_initial: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.reference is not None:
            from flowlm.model.adapter import load_causal_lm

            ref = load_causal_lm(self.cfg.reference, device=world.device)
        else:
            ref = self._need_model(model)
            if check_initial and weights_hash(ref) != self._initial_hash:
                raise FlowError("dpo: reference: null needs the model's initial weights, but the model has been "
                                "trained; compute the reference cache before resuming (or keep it)")
        n, bs = len(dataset), self.cfg.reference_batch_size
        mine = np.arange(world.rank, n, world.size)
        steps = math.ceil(math.ceil(n / world.size) / bs)  # equal on every rank: FSDP forwards are collective
        out = torch.full((2, n), -math.inf, dtype=torch.float32, device=world.device)
        was_training = ref.training
        ref.eval()
        with torch.no_grad():
            for s in range(steps):
                idx = mine[s * bs:(s + 1) * bs]
                idx = idx if len(idx) else np.array([0])  # a rank out of pairs repeats one (same value: MAX keeps it)
                batch = dataset.collate([dataset[int(i)] for i in idx])
                logps, _ = pair_logps(ref, {k: v.to(world.device) for k, v in batch.items()},
                                      pack_length=self.cfg.pack_length, shared_prefix=self.cfg.shared_prefix)
                t = torch.as_tensor(idx, device=world.device)
                out[0, t], out[1, t] = logps[:len(idx)], logps[len(idx):]
        ref.train(was_training)
        if world.distributed:
            dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out[0].cpu(), out[1].cpu()

    def _need_model(self, model: nn.Module | None) -> nn.Module:
        model = model or self._model
        if model is None:
            raise FlowError("dpo: reference: null needs the policy model (pass model= or call setup first)")
        return model

    # -- the step -----------------------------------------------------------------------------------
    def count_units(self, batch: Mapping[str, Any]) -> int:
        return int(batch["chosen_input_ids"].shape[0])

    def count_tokens(self, batch: Mapping[str, Any]) -> int:
        return int(batch["chosen_input_ids"].numel() + batch["rejected_input_ids"].numel())

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> LossOutput:
        free = self.cfg.loss_type in REFERENCE_FREE
        if self._ref is None and not free:
            raise FlowError("dpo: no reference log-probabilities; call precompute_reference(data, cache_dir) first")
        if "pair_index" not in batch:
            raise FlowError("dpo: batches need pair_index (build the data with PairDataset(..., with_index=True))")
        logps, lengths = pair_logps(model, batch, pack_length=self.cfg.pack_length,
                                    shared_prefix=self.cfg.shared_prefix)
        P = self.count_units(batch)
        if free:
            ref_c = ref_r = torch.zeros_like(logps[:P])
        else:
            idx = batch["pair_index"].to(self._ref["chosen"].device)
            ref_c, ref_r = (self._ref[side][idx].to(logps.device) for side in ("chosen", "rejected"))
        cfg = self.cfg
        out = dpo_loss(logps[:P], logps[P:], ref_c, ref_r, cfg.beta, loss_type=cfg.loss_type,
                       chosen_lengths=lengths[:P], rejected_lengths=lengths[P:], label_smoothing=cfg.label_smoothing,
                       discopop_tau=cfg.discopop_tau, simpo_gamma=cfg.simpo_gamma, sft_weight=cfg.sft_weight)
        c, r = out.chosen_rewards, out.rejected_rewards
        metrics = {
            "reward_accuracy": Mean((c > r).float().sum(), P),
            "chosen_reward": Mean(c.sum(), P),
            "rejected_reward": Mean(r.sum(), P),
            "reward_margin": Mean((c - r).sum(), P),
            "chosen_logp": Mean(logps[:P].detach().sum(), P),
            "rejected_logp": Mean(logps[P:].detach().sum(), P),
        }
        return LossOutput(out.losses.sum(), metrics)

    # -- resume -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"reference_key": self._key} if self._key else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._expected_key = state.get("reference_key")
        if self._key is not None and self._expected_key is not None and self._key != self._expected_key:
            raise FlowError(f"dpo: the checkpoint trained with reference cache {self._expected_key}, "
                            f"but {self._key} is loaded (the reference or the pair data changed)")
