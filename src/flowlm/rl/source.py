"""Rollout data source of RLVR: prompts -> sampled groups -> verified rewards -> a GRPO batch.

    source = RolloutSource(rows, tokenizer, RolloutConfig(prompts_per_step=64, group_size=8), seed=0, max_len=4096)
    source.bind(model)                 # the policy being trained (the trainer's model; one process)
    batch = next(iter(source))         # one optimizer step's batch for the `grpo` objective

Three modes (`RolloutConfig.mode`). This module is the synchronous one (the default, for comparison,
debugging and exact resume); `mode: async` hands iteration to `flowlm.rl.actor.AsyncRollouts`, where a
rollout thread generates ahead of the learner by at most `async_steps` policy versions from the same
prompt streams, through the same verification, group statistics and `collate`; `mode: ray` is the same
with rollout and reward workers as Ray actors (`flowlm.rl.ray_workers`; `num_rollout_workers`,
`num_reward_workers`, `ray_address`).

One batch, in order (the synchronous mode: generation, reward and learning take turns):
1. the engine takes the policy's current weights (`Engine.update_weights`, a copy the engine holds, with
   version = the batch's position = optimizer steps done);
2. prompts are drawn from seeded per-epoch permutations (one stream, or one per domain when
   `domain_weights` mixes domains; the domain of a row is its verifier name). A prompt whose latest
   group reached `skip_solved_threshold` is skipped from then on (open-instruct `no_resampling_pass_rate`;
   `flowlm.rl.streams`);
3. every prompt is sampled `group_size` times (`SamplingParams(n=group_size, seed=...)`, seeds derived from
   (seed, position, draw)), and every completion is verified (`flowlm.verify`, rows routed by their tags;
   in-process, or in a `VerifyPool` with hard timeouts). A verifier that raises, times out or crashes
   scores 0 and is counted in `verifier_errors`; it never stops the run;
4. rewards are the verifier scores in [0, 1] plus the DAPO soft overlong penalty when `overlong_buffer`
   is set; advantages per group by the registered estimator `advantage` (default OLMo 3 `centered`:
   `r - mean_group`, no std scaling);
5. zero-std filtering: groups whose rewards are all equal give no policy gradient; they are counted and
   left out. Active sampling draws more prompts (up to `max_draws` rounds) until the batch holds
   `prompts_per_step` informative groups; a later round draws the shortfall divided by the informative
   share seen so far (`oversample`, at most `max_oversample` x the shortfall), and informative groups beyond
   the batch are dropped and counted (`surplus`). If the rounds run out, the shortfall is filled with filtered
   groups whose rows are masked (`loss_rows` 0): the batch keeps its shape (so it still splits into
   micro-batches of whole groups) and the masked rows add nothing to the loss or to its token count.

Batch (rows laid out group by group, `group_size` rows per group; `split_rule` keeps groups whole):
`input_ids` [B, T] (prompt + completion token ids exactly as the engine produced them, never
re-tokenized; right padding), `labels` [B, T] (the completion tokens at the positions that predict them,
-100 elsewhere), `rollout_logps` [B, T] (the engine's log-prob of each label, NaN elsewhere: of the policy
at the sampling temperature with `tempered_logprobs`, else at temperature 1), `temperature` [B] (what the
learner divides the logits by to get the same quantity: the sampling temperature, or 1),
`rollout_versions` [B, T] (the policy version that sampled each label, -1 elsewhere), `advantages` [B],
`loss_rows` [B] bool (False: a padding group's row, no loss, not counted),
`masked_rows` [B] bool (a truncated completion under `mask_truncated`: its tokens leave the loss and the
token count, the sequence still counts for per-sequence normalisation, as `advantages.mask_truncated`),
`group_ids` [B] (group within the batch), `prompt_index` [B], and statistics as `stat_*` columns
(`flowlm.rl.stats.rollout_metrics` turns them into typed metrics). With `tools` the engine is wrapped in
`flowlm.tools.engine.ToolEngine` and a completion is all its turns with the tool turns between them; a tool
turn's tokens are context, not actions: label -100, log-prob NaN, version -1 (open-instruct's `mask_tool_use`). Timings per batch:
`time_generate_s`, `time_verify_s`, `time_sync_s` (weights into the engine) and `time_batch_s` (all of
the learner's time inside the source for this batch; the trainer's `step_time` includes it).

Minibatches (`minibatches` M > 1, any mode; OLMo 3 Instruct RL: 4): each rollout batch becomes M
optimizer steps of `prompts_per_step / M` whole groups each, in row order (advantages were computed per
group before the split); `num_epochs` E > 1 serves those M minibatches E times over, in the same order
(M x E optimizer steps per rollout batch). Before the first of them the source computes, without
gradient, the bound policy's log-prob of every trained token of every minibatch (`old_logps`, NaN elsewhere;
`flowlm.train.objectives.grpo.completion_logps`, the learner's own code), so the `grpo` objective's PPO
ratio on minibatch k > 1 is taken against the policy that the batch was sampled for. The engine takes the
weights once per rollout batch, with version = optimizer steps done (rollout batches x M x E). The rollout
statistics (`stat_*`) ride on the first minibatch only: they are logged with the first step of their
batch, and summing them over steps still gives the totals. With M = E = 1 nothing changes: no old-policy
pass (the learner's detached log-probs are that policy), no `old_logps` key.

Exact resume: the state is the position, the optimizer steps served, the prompt streams' (epoch,
cursor), the solve-rate table, running totals and the minibatches of the current rollout batch not yet
served (tensors, with their `old_logps`: a checkpoint between two minibatches resumes with the rest of
its batch, not a regenerated one), so a resumed synchronous run regenerates exactly the batches an
uninterrupted one would (the weights come from the trainer's checkpoint). Mode async adds the prompts drawn and not yet
consumed, regenerated first on resume (no prompt lost or replayed; see `flowlm.rl.actor`). Each batch
appends its drawn and trained prompt ids to `log_path` (JSONL); records past the restored position are
dropped on resume (`flowlm.rl.rollout_log`).

Test-only hook: `FLOWLM_RL_KILL_AT_POSITION=N` SIGKILLs the process when batch position N (0-based)
has been generated, before the trainer sees it (the `kill -9` resume test).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flowlm.errors import ConfigError, FlowError
from flowlm.rl.advantages import oversample
from flowlm.rl.config import ACTOR_MODES, ASYNC_FIELDS, RAY_FIELDS, RolloutConfig  # noqa: F401 (re-exported)
from flowlm.rl.old_policy import old_policy_logps, serve_steps
from flowlm.rl.rollout_log import RolloutLog
from flowlm.rl.rows import check_prompt_rows, is_verifier_error, prompt_functions, row_domain, verify_completions
from flowlm.rl.stats import STAT, coin_rewards, stat_columns
from flowlm.rl.streams import PromptStreams
from flowlm.train.batch import SplitRule
from flowlm.train.losses import IGNORE


@dataclass
class Group:
    """One prompt's sampled completions and their rewards."""

    index: int  # prompt index
    draw: int  # active-sampling round it came from
    prompt_ids: list[int]
    completions: list[Any]  # flowlm.generate.params.Completion
    scores: torch.Tensor  # [n] verifier scores
    rewards: torch.Tensor  # [n] scores + shaping (what the advantages are computed from)
    advantages: torch.Tensor  # [n]
    informative: bool
    errors: int  # verifier errors among the n


class RolloutSource:
    """Batches of verified, advantage-weighted rollouts from the bound policy (see module docstring)."""

    def __init__(self, rows: Sequence[dict[str, Any]], tokenizer: Any, cfg: RolloutConfig, *, seed: int,
                 max_len: int, log_path: Path | None = None, old_logps_fn: OldLogpsFn | None = None,
                 plain: bool = False) -> None:
        """`plain`: each row's `prompt` string is the prompt text as is, no chat template (RL-Zero's
        `prompt_format: plain`, as `flowlm eval --format plain` encodes it); otherwise rows are chat prompts."""
        from flowlm.generate.prompts import to_prompt_ids
        from flowlm.model.tokenizer import require_thinking_switch, turn_end_ids

        if not rows:
            raise ConfigError("rl prompts: no rows")
        self.cfg, self.tokenizer, self.seed, self.max_len = cfg, tokenizer, seed, max_len
        self.log_path = Path(log_path) if log_path is not None else None
        messages = check_prompt_rows(rows)
        self.tools = self.offered_tools(cfg, plain)
        if plain:
            if any(not isinstance(r.get("prompt"), str) for r in rows):
                raise ConfigError("rl prompts: plain prompts need a `prompt` string in every row")
            if any(r.get("tools") is not None for r in rows):
                raise ConfigError("rl prompts: rows with `tools` need chat prompts (the template lists them), "
                                  "not prompt_format: plain")
            ids = [to_prompt_ids(r["prompt"], tokenizer) for r in rows]
        else:
            if not cfg.thinking:
                require_thinking_switch(tokenizer, "rollout.thinking: false")
            schemas = [t.schema for t in self.tools.values()] or None
            ids = [to_prompt_ids(m, tokenizer, cfg.thinking, tools=prompt_functions(r, schemas))
                   for m, r in zip(messages, rows)]
        keep = [i for i, x in enumerate(ids) if 0 < len(x) < max_len]  # room for at least one new token
        if not keep:
            raise FlowError(f"rl prompts: none of the {len(rows)} prompts fits in {max_len} tokens")
        self.rows = [rows[i] for i in keep]
        self.prompt_ids = [ids[i] for i in keep]
        self.domains = [row_domain(r) for r in self.rows]
        self.dropped_long = len(rows) - len(keep)
        self.stop_ids = turn_end_ids(tokenizer)  # chat replies end at <|im_end|>, not at the model's EOS
        self.streams = PromptStreams(self.domains, cfg.domain_weights, seed, cfg.skip_solved_threshold)
        self.position = 0  # rollout batches generated (seeds, the log)
        self.steps = 0  # minibatches served = optimizer steps done when the trainer has trained them (version)
        self._pending: list[dict[str, Any]] = []  # minibatches of the current rollout batch not yet served
        # the old-policy pass of minibatches / num_epochs > 1 (under torchrun, `flowlm.rl.ranks` makes it collective)
        self.old_logps_fn: OldLogpsFn = old_logps_fn or old_policy_logps
        self.pass_rate: dict[int, float] = {}  # prompt index -> pass rate of its latest group
        self.totals: Counter[str] = Counter()
        self.split_rule = SplitRule(group=cfg.group_size)
        self.engine: Any = None
        self._policy: nn.Module | None = None
        self._pool: Any = None
        self._exports: list[Path] = []  # temporary checkpoints the vLLM backend was built from (removed at close)
        self._rollout_log = RolloutLog(self.log_path) if self.log_path is not None else None
        self.weights: dict[str, torch.Tensor] | None = None  # full weights for the next batch (torchrun: rank 0)
        self._actor: Any = None  # flowlm.rl.actor.AsyncRollouts (mode async), started by the first iteration
        self._async_state: dict[str, Any] = {}  # mode async: the restored in-flight prompts, until the actor starts

    @staticmethod
    def offered_tools(cfg: RolloutConfig, plain: bool) -> dict[str, Any]:
        """The built-in tools of `cfg.tools` (`flowlm.tools.builtin`), checked to run here; {} without."""
        if not cfg.tools:
            return {}
        if plain:
            raise ConfigError("rollout.tools: tools need chat prompts (the template lists them), not prompt_format: plain")
        from flowlm.tools.builtin import usable_tools

        return usable_tools(cfg.tools)

    def with_tools(self, engine: Any) -> Any:
        """`engine` wrapped so its completions run the offered tools between turns (`flowlm.tools.engine`);
        `engine` itself without tools."""
        if not self.tools:
            return engine
        from flowlm.tools.engine import ToolEngine

        return ToolEngine(engine, self.tools, max_calls=self.cfg.max_tool_calls, enable_thinking=self.cfg.thinking,
                          workers=self.cfg.tool_workers)

    @property
    def batches_per_epoch(self) -> int:
        """Trainer batches (optimizer steps) per pass over the prompts."""
        return max(1, len(self.rows) // self.cfg.prompts_per_step) * self.cfg.steps_per_batch()

    def policy_weights(self) -> dict[str, torch.Tensor]:
        """The policy's full weights for the rollout engines: under torchrun those rank 0 was handed for this
        batch (`weights`, gathered from the FSDP2 shards by `flowlm.rl.ranks`), else its state dict."""
        if self.weights is not None:
            return self.weights
        if self._policy is None:
            raise ConfigError("rl rollouts: bind(model) before reading its weights")
        return self._policy.state_dict()

    def shard(self, rank: int, size: int) -> Any:
        """This rank's view under torchrun (`flowlm.rl.ranks.RankRollouts`): rank 0 generates, every rank
        trains its share of each batch's groups."""
        from flowlm.rl.ranks import RankRollouts

        return RankRollouts(self, rank, size)

    def bind(self, policy: nn.Module, *, old_logps_fn: OldLogpsFn | None = None) -> None:
        """Sample from `policy` (its weights are read before every batch); builds the engine.
        `old_logps_fn(policy, minibatch) -> [B, T]`: the old-policy pass of minibatches or num_epochs > 1
        (default: the one given to the constructor, else `old_policy_logps` with the `grpo` objective's
        default LM-head settings, in fp32)."""
        if _sharded(policy):
            raise ConfigError("rl: rollouts run in one process (the engine needs full weights)")
        self._policy = policy
        if old_logps_fn is not None:
            self.old_logps_fn = old_logps_fn
        self.engine = self.make_engine(policy) if self.cfg.mode != "ray" else None  # ray: engines in the actors

    def make_engine(self, policy: nn.Module) -> Any:
        """A rollout engine holding its own copy of `policy`'s current weights. A policy sharded by FSDP2
        since `bind` (torchrun; mode async rebuilding a dead worker's engine) gives a freshly initialised
        copy of its architecture: the caller loads the full weights (`policy_weights`) into the engine."""
        from flowlm.generate.engine import Engine, GenerateConfig
        from flowlm.model.adapter import HFCausalLM
        from flowlm.model.olmo3 import Olmo3

        if _sharded(policy):
            if isinstance(policy, Olmo3):
                policy = Olmo3(policy.cfg)
            elif isinstance(policy, HFCausalLM):
                policy = HFCausalLM.from_config(policy.hf.config)
            else:
                raise ConfigError(f"rl rollouts: cannot rebuild an engine from a sharded {type(policy).__name__}")

        slots = self.cfg.max_slots or self.cfg.prompts_per_step * self.cfg.group_size
        context = min(self.max_len, getattr(getattr(policy, "cfg", None), "max_seq_len", self.max_len))
        if self.cfg.backend == "vllm":  # removed at close
            from flowlm.generate.vllm_backend import VLLMEngine

            engine = VLLMEngine.from_policy(policy, self.tokenizer, max_slots=slots, context=context, seed=self.seed,
                                            enable_thinking=self.cfg.thinking, logprobs=self.cfg.logprobs_mode(),
                                            gpu_memory_utilization=self.cfg.vllm_gpu_memory)
            self._exports.append(engine.export_dir)
            return self.with_tools(engine)
        return self.with_tools(Engine(policy, self.tokenizer, GenerateConfig(
            max_slots=slots, context=context, enable_thinking=self.cfg.thinking, logprobs=self.cfg.logprobs_mode())))

    def close(self) -> None:
        """Stop the rollout workers (modes async and ray) and the verifier processes (if any)."""
        if self._actor is not None:  # keep what was in flight: a new iteration regenerates it first
            self._async_state = self._actor.state()
            self._actor.close()
            self._actor = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        for path in self._exports:  # the vLLM backend's exported checkpoints
            shutil.rmtree(path, ignore_errors=True)
        self._exports.clear()

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Mode async adds `async`: the prompts drawn and not consumed by the learner (`flowlm.rl.actor`),
        taken under the actor's lock with the streams' cursors, so the two agree."""
        with self._actor.lock if self._actor is not None else contextlib.nullcontext():
            state = {"position": self.position, "steps": self.steps, "pending": list(self._pending),
                     "pass_rate": dict(self.pass_rate), "totals": dict(self.totals),
                     "streams": self.streams.state_dict()}
            if self.cfg.mode in ACTOR_MODES:  # async and ray keep the same state: either resumes the other
                state["async"] = self._actor.state() if self._actor is not None else dict(self._async_state)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if ("async" in state) != (self.cfg.mode in ACTOR_MODES):
            raise FlowError(f"rl resume: the checkpoint was written in mode {'async' if 'async' in state else 'sync'}, "
                            f"this run is mode {self.cfg.mode}")
        self._async_state = dict(state.get("async", {}))
        self.position = int(state["position"])
        self.steps = int(state.get("steps", self.position))  # (checkpoints from before minibatches: one per batch)
        self._pending = [dict(mb) for mb in state.get("pending", [])]
        self.pass_rate = {int(k): float(v) for k, v in state.get("pass_rate", {}).items()}
        self.totals = Counter(state.get("totals", {}))
        self.streams.load_state_dict(state.get("streams", {}))

    # -- iteration --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._policy is None or (self.engine is None and self.cfg.mode != "ray"):
            raise ConfigError("rl rollouts: bind(model) before iterating")
        if self._rollout_log is not None:  # records past the restored position: an interrupted attempt's
            self._rollout_log.trim(self.position)
        if self.cfg.mode in ACTOR_MODES and self._actor is None:
            from flowlm.rl.actor import AsyncRollouts

            actor = AsyncRollouts(self, self._policy, self._async_state)
            actor.start()  # (a failed start has released what it took)
            self._actor = actor
        try:
            while True:
                if not self._pending:
                    batch = self._actor.next_batch() if self._actor is not None else self.next_batch()
                    if os.environ.get("FLOWLM_RL_KILL_AT_POSITION") == str(self.position):  # test-only (see docstring)
                        os.kill(os.getpid(), signal.SIGKILL)
                    self._pending = self.minibatches(batch)
                    self.position += 1
                self.steps += 1
                yield self._pending.pop(0)
        finally:  # the consumer is done (or gone): stop the rollout threads
            if self._actor is not None:
                self.close()

    @property
    def pending_steps(self) -> int:
        """Optimizer steps of the current rollout batch not yet served (0: the next step starts a new batch)."""
        return len(self._pending)

    def minibatches(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """`batch` as `minibatches` trainer batches of whole groups, each with the current policy's `old_logps`
        (computed here, before any of them trains), `num_epochs` times over in the same order; the statistics
        columns stay with the first one."""
        return serve_steps(batch, self._policy, self.old_logps_fn, self.cfg.minibatches, self.cfg.num_epochs,
                           self.split_rule)

    def next_batch(self) -> dict[str, Any]:
        """The batch of the current position (the position does not advance)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.engine.update_weights(self.policy_weights(), version=self.steps)  # idle engine: applied now
        kept: list[Group] = []
        spare: list[Group] = []
        surplus: list[Group] = []
        stats: Counter[str] = Counter()
        stats["time_sync_s"] += time.perf_counter() - t0
        drawn: list[int] = []
        for draw in range(cfg.max_draws if cfg.active_sampling else 1):
            need = cfg.prompts_per_step - len(kept)  # surplus only arises in the round that fills the batch
            n = need if draw == 0 else oversample(need, len(kept), len(kept) + len(spare), cfg.max_oversample)
            indices = self._pick(draw, n, stats)
            drawn += indices
            stats["resampled"] += len(indices) if draw > 0 else 0
            stats["draws"] += 1
            for g in self._rollout(indices, draw, stats):
                if g.informative or not cfg.filter_zero_std:
                    (kept if len(kept) < cfg.prompts_per_step else surplus).append(g)
                else:
                    spare.append(g)
            if len(kept) == cfg.prompts_per_step:
                break
        pad = spare[len(spare) - (cfg.prompts_per_step - len(kept)):] if len(kept) < cfg.prompts_per_step else []
        groups = kept + pad
        stats["filtered"] = len(spare) if cfg.filter_zero_std else 0
        stats["surplus"] = len(surplus)
        stats["informative"] = sum(g.informative for g in groups)
        stats["num:informative_share"], stats["den:informative_share"] = stats["informative"], len(groups)
        self.totals.update({k: v for k, v in stats.items() if not k.startswith(("num:", "den:", "time_"))})
        self.totals["batches"] += 1
        self._log(drawn, groups, len(kept))
        stats["time_batch_s"] += time.perf_counter() - t0
        return self.collate(groups, trains=[True] * len(kept) + [False] * len(pad), stats=stats)

    def _pick(self, draw: int, n: int, stats: Counter[str]) -> list[int]:
        """`n` prompt indices for round `draw` of this position (seeded by (seed, position, draw))."""
        rng = np.random.default_rng([self.seed, self.position, draw])
        live = self.streams.names()
        return [self.draw(rng, live, stats) for _ in range(n)]

    def draw(self, rng: np.random.Generator, live: list[str], stats: Counter[str]) -> int:
        """The next prompt from the streams (`PromptStreams.draw`), skipping solved ones by `pass_rate`."""
        return self.streams.draw(rng, live, self.pass_rate, stats)

    # -- one round: generate, verify, reward --------------------------------------------------------
    def _rollout(self, indices: list[int], draw: int, stats: Counter[str]) -> list[Group]:
        from flowlm.generate.params import SamplingParams

        cfg, n = self.cfg, self.cfg.group_size
        base = int(np.random.default_rng([self.seed, self.position, draw, 1]).integers(1 << 30))
        params = [SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                 stop=tuple(cfg.stop), stop_token_ids=self.stop_ids, seed=base + k * n) for k in range(len(indices))]
        t0 = time.perf_counter()
        results = self.engine.generate([self.prompt_ids[i] for i in indices], params)
        t1 = time.perf_counter()
        for i, res in zip(indices, results):
            if not res.ok:  # prompts were checked against the context: this is a bug, not bad data
                raise FlowError(f"rl rollouts: prompt {self.rows[i].get('id', i)} could not be sampled: {res.error}")
        comps = [c for res in results for c in res.completions]
        verdicts = self._verify([self.rows[i] for i in indices for _ in range(n)], [c.text for c in comps])
        stats["time_generate_s"] += t1 - t0
        stats["time_verify_s"] += time.perf_counter() - t1
        stats["rollout_tokens"] += sum(len(c.tokens) - sum(c.tool_mask or ()) for c in comps)  # sampled ones
        return [self._group(i, draw, res, verdicts[k * n:(k + 1) * n], stats)
                for k, (i, res) in enumerate(zip(indices, results))]

    def _verify(self, rows: list[dict[str, Any]], texts: list[str]) -> list[Any]:
        if self.cfg.verify_workers > 0 and self._pool is None:
            from flowlm.verify.pool import VerifyPool

            self._pool = VerifyPool(workers=self.cfg.verify_workers, timeout=self.cfg.verify_timeout)
        return verify_completions(rows, texts, pool=self._pool)

    def _group(self, index: int, draw: int, res: Any, verdicts: list[Any], stats: Counter[str]) -> Group:
        from flowlm.generate.params import FINISH_LENGTH
        from flowlm.rl.advantages import advantage_estimator, informative_groups, overlong_penalty

        cfg = self.cfg
        scores = torch.tensor([v.score for v in verdicts], dtype=torch.float32)
        lengths = torch.tensor([len(c.tokens) for c in res.completions])
        rewards = scores if cfg.reward == "verifier" else coin_rewards(self.seed, index, res.completions)
        if cfg.overlong_buffer is not None:
            rewards = rewards + overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_buffer,
                                                factor=cfg.overlong_penalty)
        advantages = advantage_estimator(cfg.advantage)(rewards, cfg.group_size)
        informative = bool(informative_groups(rewards, cfg.group_size)[0])
        errors = sum(is_verifier_error(v) for v in verdicts)
        self.pass_rate[index] = float(scores.mean())
        domain = self.domains[index]
        kind = "mixed" if bool(informative_groups(scores, cfg.group_size)[0]) else (
            "solved" if float(scores[0]) > 0 else "unsolved")
        stats[f"groups_{kind}"] += 1
        stats["prompts"] += 1
        stats["verifier_errors"] += errors
        stats["completions"] += len(verdicts)
        if self.tools:
            for key, value in (("tool_calls", sum(c.tool_calls for c in res.completions)),
                               ("tool_errors", sum(c.tool_errors for c in res.completions))):
                stats[f"num:{key}"] += float(value)
                stats[f"den:{key}"] += len(verdicts)
        for key, value in ((f"reward/{domain}", scores.sum()), ("reward", scores.sum()),
                           ("completion_len", lengths.sum()),
                           ("truncated_share", sum(c.finish_reason == FINISH_LENGTH for c in res.completions))):
            stats[f"num:{key}"] += float(value)
            stats[f"den:{key}"] += len(verdicts)
        return Group(index, draw, list(res.prompt_ids), res.completions, scores, rewards, advantages, informative,
                     errors)

    # -- the batch ----------------------------------------------------------------------------------
    def collate(self, groups: list[Group], trains: list[bool], stats: Counter[str]) -> dict[str, Any]:
        """Token tensors of `groups` (row layout: group by group) plus the statistics columns."""
        from flowlm.generate.params import FINISH_LENGTH

        seqs = [(g.prompt_ids, c) for g in groups for c in g.completions]
        B, T = len(seqs), max(len(p) + len(c.tokens) for p, c in seqs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((B, T), pad, dtype=torch.int64)
        labels = torch.full((B, T), IGNORE, dtype=torch.int64)
        rollout_logps = torch.full((B, T), float("nan"), dtype=torch.float32)
        versions = torch.full((B, T), -1, dtype=torch.int64)
        for r, (prompt, comp) in enumerate(seqs):
            ids = torch.tensor(prompt + comp.tokens, dtype=torch.int64)
            input_ids[r, : len(ids)] = ids
            # position j predicts token j + 1: the completion's targets start at the prompt's last position
            start, n = len(prompt) - 1, len(comp.tokens)
            labels[r, start:start + n] = ids[len(prompt):]
            rollout_logps[r, start:start + n] = torch.tensor(comp.logprobs, dtype=torch.float32)
            versions[r, start:start + n] = torch.tensor(comp.versions, dtype=torch.int64)
            if comp.tool_mask is not None and any(comp.tool_mask):  # tool answers: context, never trained
                tool = start + torch.nonzero(torch.tensor(comp.tool_mask, dtype=torch.bool)).squeeze(1)
                labels[r, tool], rollout_logps[r, tool], versions[r, tool] = IGNORE, float("nan"), -1
        n = self.cfg.group_size
        truncated = torch.tensor([c.finish_reason == FINISH_LENGTH for _, c in seqs])
        batch: dict[str, Any] = {
            "input_ids": input_ids, "labels": labels, "rollout_logps": rollout_logps, "rollout_versions": versions,
            "advantages": torch.cat([g.advantages for g in groups]).float(),
            "loss_rows": torch.tensor(trains).repeat_interleave(n),
            "masked_rows": truncated & self.cfg.mask_truncated,
            "group_ids": torch.arange(len(groups)).repeat_interleave(n),
            "prompt_index": torch.tensor([g.index for g in groups]).repeat_interleave(n),
            "temperature": torch.full((B,), self.cfg.logit_temperature(), dtype=torch.float32),
        }
        batch.update(stat_columns(stats, B))
        return batch

    def _log(self, drawn: list[int], groups: list[Group], n_trained: int) -> None:
        if self.log_path is None:
            return
        ids = [str(self.rows[i].get("id", i)) for i in drawn]
        self.append_log({"position": self.position, "drawn": ids,
                         "trained": [str(self.rows[g.index].get("id", g.index)) for g in groups[:n_trained]],
                         "pass_rates": [round(float(g.scores.mean()), 4) for g in groups]})

    def append_log(self, rec: dict[str, Any]) -> None:
        """One JSON line in `log_path` (the caller checked it is set; `flowlm.rl.rollout_log`)."""
        assert self._rollout_log is not None
        self._rollout_log.append(rec)


OldLogpsFn = Callable[[nn.Module, dict[str, Any]], torch.Tensor]


def _sharded(policy: nn.Module) -> bool:
    """Whether FSDP2 has sharded `policy` (its parameters are DTensors): an engine cannot copy it."""
    return any(type(p).__name__ == "DTensor" for p in policy.parameters())
