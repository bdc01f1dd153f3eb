"""`RolloutConfig`: how rollouts are sampled, rewarded, filtered and scheduled (modes sync, async, ray), as
one typed, validated config; `flowlm.rl.source` (the sync mode) and `flowlm.rl.actor` (async, ray) read it.
Field descriptions are the reference; docs/rl.md maps the defaults to OLMo 3's flags."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from flowlm.config import Strict
from flowlm.tools.builtin import ToolNames

ASYNC_FIELDS = {"async_steps", "max_inflight_groups", "weight_sync_timeout", "rollout_timeout", "max_worker_restarts"}
RAY_FIELDS = {"ray_address", "num_rollout_workers", "num_reward_workers", "rollout_worker_cpus",
              "rollout_worker_gpus"}
ACTOR_MODES = ("async", "ray")  # modes run by flowlm.rl.actor.AsyncRollouts (same checkpoint state)


class RolloutConfig(Strict):
    """How rollouts are sampled, rewarded and filtered. Defaults follow OLMo 3's RL runs
    (`/work/shared/reference/rl-anchors.md` §0): 8 samples per prompt at temperature 1, centred advantages,
    zero-std filtering; active sampling as the 32B Think and Instruct runs."""

    prompts_per_step: int = Field(64, gt=0, description="groups (prompts) per optimizer step")
    group_size: int = Field(8, ge=2, description="completions per prompt")
    temperature: float = Field(1.0, gt=0)
    tempered_logprobs: bool = Field(
        True, description="the learner's and the engine's log-probs are those of the sampling policy: logits divided "
                          "by `temperature`, as TRL, open-instruct and veRL train (false: the raw policy at "
                          "temperature 1 on both sides; the same when temperature is 1)")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, gt=0)
    thinking: bool = Field(True, description="render chat prompts with thinking on (Qwen3 convention)")
    filter_zero_std: bool = Field(True, description="leave groups whose rewards are all equal out of the loss")
    active_sampling: bool = Field(True, description="draw more prompts until the batch is all informative groups")
    max_draws: int = Field(8, gt=0, description="active sampling: rounds of drawing per batch at most")
    max_oversample: float = Field(
        4.0, ge=1, description="active sampling: a later round draws the shortfall divided by the informative "
                               "share seen so far, at most this many times the shortfall (1: the shortfall only; "
                               "informative groups beyond the batch are dropped and counted as surplus)")
    skip_solved_threshold: float | None = Field(
        None, gt=0, le=1, description="skip prompts whose latest group's pass rate reached this (Instruct: 0.875)")
    mask_truncated: bool = Field(False, description="truncated completions add nothing to the loss (RL-Zero: true)")
    overlong_buffer: int | None = Field(None, ge=0, description="DAPO soft overlong penalty: buffer length")
    overlong_penalty: float = Field(1.0, ge=0, description="DAPO soft overlong penalty: the full penalty")
    advantage: str = Field("centered", description="registered advantage estimator (flowlm.rl.advantages)")
    domain_weights: dict[str, float] | None = Field(
        None, description="sampling weight per domain (verifier name); domains not named are not drawn")
    verify_workers: int = Field(0, ge=0, description="verifier processes (0 = in-process, no hard timeout)")
    verify_timeout: float = Field(60.0, gt=0, description="seconds per verification (with verify_workers > 0)")
    max_slots: int | None = Field(None, gt=0, description="sequences decoded together (default: a whole step)")
    backend: Literal["native", "vllm"] = Field(
        "native", description="the rollout engine: native (flowlm.generate, CPU or GPU) or vllm (CUDA, the vllm "
                              "extra; the policy is exported once as an HF checkpoint, then updated in place)")
    vllm_gpu_memory: float = Field(
        0.3, gt=0, le=1, description="backend vllm: the share of GPU memory vLLM takes for weights and KV cache "
                                     "(the learner shares the GPU; TRL's colocate default is 0.3)")
    mode: Literal["sync", "async", "ray"] = Field(
        "sync", description="sync: generation, reward and learning take turns (exact resume); async: a rollout "
                            "worker thread generates ahead of the learner (flowlm.rl.actor); ray: async with "
                            "rollout and reward workers as Ray actors (flowlm.rl.ray_workers)")
    async_steps: int = Field(
        8, ge=1, description="async: groups whose oldest token is more policy versions (weight pushes: one per "
                             "rollout batch) behind the learner are dropped, counted and regenerated (OLMo 3: 8, "
                             "RL-Zero 4; 1-2 on CPU)")
    max_inflight_groups: int | None = Field(
        None, gt=0, description="async: groups dispatched and not yet consumed (default async_steps x "
                                "prompts_per_step); the engine decodes max_slots sequences of them at a time")
    weight_sync_timeout: float = Field(
        60.0, gt=0, description="async: seconds a pushed weight update may stay unapplied before the run fails")
    rollout_timeout: float = Field(600.0, gt=0, description="async: seconds the learner waits for one group at most")
    max_worker_restarts: int = Field(3, ge=0, description="async: crashed rollout workers restarted before failing")
    ray_address: str | None = Field(
        None, min_length=1, description="ray: None starts a local Ray (ray.init with the workers' CPUs), 'auto' or "
                                        "an address connects to a running cluster (a Ray already initialised in "
                                        "this process is used as it is)")
    num_rollout_workers: int = Field(1, ge=1, description="ray: rollout actors, each with its own engine")
    num_reward_workers: int = Field(
        1, ge=0, description="ray: verifier actors (0 = verify in this process, or its VerifyPool)")
    rollout_worker_cpus: int = Field(
        1, ge=1, description="ray: CPUs each rollout actor asks Ray for, and its torch threads")
    rollout_worker_gpus: float | None = Field(
        None, ge=0, description="ray: GPUs Ray gives each rollout actor (default: 1 with backend vllm, else 0)")
    stop: list[str] = Field(default_factory=list, description="strings that end a completion (plain prompts: "
                                                                  "the next '\\nQuestion:'); chat stops at <|im_end|>")
    tools: ToolNames = Field(
        default_factory=list, description="tools the policy may call while it samples (built-in: calculator, python; "
                                          "or mcp:SERVER, an MCP server's; flowlm.tools): listed in the system turn, run between turns, their "
                                          "answers appended as tokens and masked out of the loss (mask_tool_use)")
    max_tool_calls: int = Field(5, ge=1, description="with tools: calls (and tool turns) per completion at most")
    tool_workers: int = Field(
        8, ge=0, description="with tools: threads that run calls while the engine decodes the other sequences "
                             "(0: inline, in the engine's step: a schedule that depends on the seeds alone)")
    reward: Literal["verifier", "random"] = Field(
        "verifier", description="what the advantages come from: the verifiers' scores, or (the spurious-reward "
                                "control of RL-Zero) a fair coin per completion; the logged reward stays the verifiers'")
    minibatches: int = Field(
        1, gt=0, description="optimizer steps per rollout batch, whole groups each (OLMo 3 Instruct: 4, Think: 1); "
                             "> 1 makes the PPO ratio and clip act (old_logps from before the first step); in "
                             "modes async and ray the weights are pushed once per rollout batch and async_steps "
                             "counts rollout batches")
    num_epochs: int = Field(
        1, gt=0, description="passes over each rollout batch, each pass `minibatches` optimizer steps in row order "
                             "(open-instruct's --num_epochs, TRL's num_iterations); > 1 makes the ratio and clip "
                             "act like minibatches > 1")

    def steps_per_batch(self) -> int:
        """Optimizer steps one rollout batch makes: `minibatches` x `num_epochs`."""
        return self.minibatches * self.num_epochs

    def logprobs_mode(self) -> str:
        """The rollout engine's `GenerateConfig.logprobs`: "tempered" or "raw" (`tempered_logprobs`)."""
        return "tempered" if self.tempered_logprobs else "raw"

    def logit_temperature(self) -> float:
        """What the learner divides its logits by so its log-probs are the engine's: `temperature` or 1."""
        return self.temperature if self.tempered_logprobs else 1.0

    def actor_gpus(self) -> float:
        """Mode ray: the GPUs each rollout actor asks Ray for (`rollout_worker_gpus`, default 1 for vllm)."""
        if self.rollout_worker_gpus is not None:
            return self.rollout_worker_gpus
        return 1.0 if self.backend == "vllm" else 0.0

    def max_groups(self) -> int:
        """The most groups one batch may roll out: `prompts_per_step`, then (active sampling) at most
        `floor(max_oversample x prompts_per_step)` in each of the other `max_draws - 1` rounds."""
        if not self.active_sampling:
            return self.prompts_per_step
        return self.prompts_per_step + (self.max_draws - 1) * math.floor(self.max_oversample * self.prompts_per_step)

    @field_validator("advantage")
    @classmethod
    def _known_estimator(cls, value: str) -> str:
        from flowlm.rl.advantages import advantage_estimator

        advantage_estimator(value)  # ValueError naming the closest known estimator
        return value

    @model_validator(mode="after")
    def _check(self) -> "RolloutConfig":
        if self.active_sampling and not self.filter_zero_std:
            raise ValueError("active_sampling needs filter_zero_std (it refills the groups filtering drops)")
        if self.overlong_buffer is not None and self.overlong_buffer > self.max_new_tokens:
            raise ValueError(f"overlong_buffer {self.overlong_buffer} exceeds max_new_tokens {self.max_new_tokens}")
        if self.domain_weights is not None and (not self.domain_weights or any(
                w < 0 for w in self.domain_weights.values()) or not any(self.domain_weights.values())):
            raise ValueError("domain_weights must be non-negative with at least one positive weight")
        if self.max_slots is not None and self.max_slots < self.group_size:
            raise ValueError(f"max_slots {self.max_slots} must hold a whole group ({self.group_size})")
        # a non-default value only (a dumped and reloaded sync config carries the defaults)
        async_only = sorted(f for f in ASYNC_FIELDS if getattr(self, f) != type(self).model_fields[f].default)
        if self.mode == "sync" and async_only:
            raise ValueError(f"{', '.join(async_only)} only apply to mode: async or ray")
        ray_only = sorted(f for f in RAY_FIELDS if getattr(self, f) != type(self).model_fields[f].default)
        if self.mode != "ray" and ray_only:
            raise ValueError(f"{', '.join(ray_only)} only apply to mode: ray")
        if self.backend != "vllm" and self.vllm_gpu_memory != type(self).model_fields["vllm_gpu_memory"].default:
            raise ValueError("vllm_gpu_memory only applies to backend: vllm")
        tool_only = sorted(f for f in ("max_tool_calls", "tool_workers")
                           if getattr(self, f) != type(self).model_fields[f].default)
        if not self.tools and tool_only:
            raise ValueError(f"{', '.join(tool_only)} only applies with tools")
        if self.prompts_per_step % self.minibatches:
            raise ValueError(f"minibatches {self.minibatches} must divide prompts_per_step {self.prompts_per_step} "
                             "(minibatches hold whole groups)")
        return self
