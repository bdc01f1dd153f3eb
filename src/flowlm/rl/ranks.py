"""The RL learner under torchrun/FSDP2: rank 0 generates, every rank trains its share of the groups.

`RolloutSource.shard(rank, size)` returns a `RankRollouts`. Per rollout batch:

1. every rank takes part in gathering the policy's full weights from its FSDP2 shards
   (`flowlm.train.checkpoint.full_state`, a collective; rank 0 receives them on the CPU);
2. rank 0's `RolloutSource` makes the batch exactly as in one process, with those weights
   (`RolloutSource.policy_weights`): mode sync loads them into its rollout engine and samples; mode async
   hands them to its rollout thread as an inflight update (`flowlm.rl.actor`); mode ray puts them in the
   object store for its rollout actors, also inflight (`flowlm.rl.ray_workers`); in both actor modes
   the workers have generated ahead meanwhile;
3. the batch is broadcast from rank 0 (`torch.distributed.broadcast_object_list`), and each rank keeps
   its `1/size` of the groups (`flowlm.train.batch.split_batch`, whole groups; the batch statistics
   ride in the first rows, so they are counted once when the trainer sums its metrics over ranks).

Minibatches (`minibatches` M or `num_epochs` E > 1): a rollout batch is made only when rank 0's source
has no minibatch of the current batch left (a flag broadcast before each step), and the weights are
gathered then and on the first step (mode async starts its rollout thread on them, also when a resume
first serves the rest of a batch). The old-policy pass of each of the M minibatches is collective
(`_old_pass`): rank 0 broadcasts the minibatch, every rank computes the log-probs of its own share of
the groups with the FSDP2 policy, and the shares are gathered back, so rank 0's source holds whole
minibatches with their `old_logps` exactly as one process does. Its checkpoint state is then the same
too: a checkpoint between two minibatches resumes with the rest of the batch, on every rank. The other
ranks keep their shares from that pass (with their own `old_logps`), so serving a step sends them only
its statistics columns and key order, not the minibatch again; the rest of a batch resumed from a
checkpoint (its old pass ran before the crash) is sent whole.

The trainer normalises the loss over the global batch (its units summed over ranks), so two ranks
compute what one process computes on the whole batch. The engine is built from the unsharded model
before FSDP2 shards it (`binds_unsharded`: `train_once` binds such a loader first). Checkpoints hold
rank 0's source state (the trainer saves rank 0's loader state and loads it on every rank; the other
ranks ignore it), so `kill -9` and a rerun resume the prompt stream as in one process. Mode async's
thread shares rank 0's cores (on a GPU node, its GPU), like a colocated engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from flowlm.rl.stats import STAT


class RankRollouts:
    """This rank's share of every rollout batch of a `RolloutSource` (see module docstring)."""

    binds_unsharded = True  # `train_once` binds it before FSDP2 shards the model

    def __init__(self, source: Any, rank: int, size: int) -> None:
        self.source, self.rank, self.size = source, rank, size
        self.split_rule = source.split_rule
        self.policy: nn.Module | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.source.batches_per_epoch

    def bind(self, policy: nn.Module) -> None:
        """Keep `policy` (sharded in place later) for the weight gathers; rank 0 builds its engine now,
        from the full weights."""
        self.policy = policy
        if self.rank == 0:
            self.source.bind(policy)

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict() if self.rank == 0 else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.rank == 0:
            self.source.load_state_dict(state)

    def close(self) -> None:
        self.source.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import torch.distributed as dist

        from flowlm.train.batch import split_batch
        from flowlm.train.checkpoint import full_state

        if self.policy is None:
            raise RuntimeError("rl rollouts: bind(model) before iterating")
        src = self.source
        several = src.cfg.steps_per_batch() > 1
        local_pass = src.old_logps_fn
        if several and self.rank == 0:  # the source's old-policy pass becomes the collective one
            src.old_logps_fn = lambda policy, part: self._old_pass(local_pass, part)
        batches = iter(src) if self.rank == 0 else None
        first = True
        held: list[dict[str, Any]] = []  # ranks > 0: their shares of this batch's minibatches, from the old pass
        fresh = False  # rank 0: the current batch's old pass ran in this process (so the other ranks hold it)
        served = 0  # steps of the current rollout batch served before this one
        try:
            while True:
                new = [True]  # does this step start a rollout batch? (always, with one step per batch)
                if several:
                    new = [src.pending_steps == 0 if self.rank == 0 else None]
                    dist.broadcast_object_list(new, src=0)
                # the weights: for every rollout batch, and for the first step (mode async starts its
                # engine then, also when a resume first serves the rest of a batch)
                gather, first = bool(new[0]) or first, False
                if gather:
                    weights, _ = full_state(self.policy, None)  # collective: every rank
                served = 0 if new[0] else served
                box: list[Any] = [None]
                if batches is not None:
                    if gather:
                        src.weights = weights
                    fresh = bool(new[0]) or fresh
                    step = next(batches)  # a new batch: rank 0's M old-policy passes meet the loop below
                    # the other ranks hold their shares of a batch whose old pass ran here: only the step's
                    # statistics columns and key order travel; a batch resumed from a checkpoint travels whole
                    box[0] = ({k: v for k, v in step.items() if k.startswith(STAT)}, list(step)) \
                        if several and fresh else step
                elif several and new[0]:
                    held = [self._old_pass(local_pass, None) for _ in range(src.cfg.minibatches)]
                dist.broadcast_object_list(box, src=0)
                if self.rank == 0 or isinstance(box[0], dict):
                    yield split_batch(step if self.rank == 0 else box[0], self.size, self.split_rule)[self.rank]
                else:
                    yield self._from_held(held[served % src.cfg.minibatches], *box[0])
                served += 1
        finally:
            if self.rank == 0:
                src.old_logps_fn = local_pass

    def _from_held(self, share: dict[str, Any], stats: dict[str, Any], keys: list[str]) -> dict[str, Any]:
        """This rank's share of a step of a batch it holds: the minibatch's share (with its `old_logps`) and
        this rank's rows of the step's statistics columns, in the key order of rank 0's step (the trainer
        all-reduces metrics in that order)."""
        from flowlm.train.batch import split_batch

        rows = split_batch(stats, self.size, self.split_rule)[self.rank] if stats else {}
        return {k: rows[k] if k.startswith(STAT) else share[k] for k in keys}

    def _old_pass(self, local_pass: Any, part: dict[str, Any] | None) -> Any:
        """One minibatch's old-policy log-probs, computed by every rank on its share of the groups: rank 0
        gives `part` (and gets the whole `[B, T]` back); another rank gives None and gets its share of the
        minibatch with its `old_logps`, which it serves from then on (rank 0 sends only the statistics)."""
        import torch
        import torch.distributed as dist

        from flowlm.train.batch import split_batch

        box: list[Any] = [part]
        dist.broadcast_object_list(box, src=0)
        share = split_batch(box[0], self.size, self.split_rule)[self.rank]
        shares: list[Any] = [None] * self.size
        mine = local_pass(self.policy, share)
        dist.all_gather_object(shares, mine)
        return torch.cat(shares, 0) if self.rank == 0 else {**share, "old_logps": mine}
