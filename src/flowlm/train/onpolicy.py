"""On-policy batches: the student samples its own completions through the rollout engine every step.

On-policy distillation (Qwen3's strong-to-weak phase 2; GKD with `lmbda = 1`) trains on sequences the
*current* student wrote, scored per token against the teacher by the `distill` objective. This loader
is that objective's data source, so on-policy distillation is the same engine, objective and
checkpoints as every other stage; only where the sequences come from differs:

    loader = OnPolicyLoader(prompts, tokenizer, batch_size=8, seed=0, max_new_tokens=256)
    loader.bind(model)                       # the policy being trained (the trainer's model)
    batch = next(iter(loader))               # input_ids / labels [B, T]: labels on completion tokens

Before each batch the engine takes the policy's current weights (`Engine.update_weights`, a copy held
by the engine), then samples one completion per prompt at `temperature` with a seed derived from
(seed, epoch, position, row), so a resumed run regenerates exactly what an uninterrupted one would:
the loader's state is only its position. Prompts are visited in a seeded permutation per epoch.

With `tools` the student samples through the tool loop (`flowlm.tools.engine.ToolEngine`): its calls run
between its turns and the tools' answers are appended as tokens, which the batch keeps as context (the
teacher reads them too) and leaves out of the labels, as RL does (`mask_tool_use`). Calls run inline by
default (`tool_workers=0`), so the tokens depend on the seeds alone and a resumed run regenerates them.
Each batch carries its statistics (`stat_sum/...` columns, `flowlm.rl.stats`): generated tokens, truncated
completions, and with tools the calls made and the calls answered with an error.
Single process: under torchrun each rank would need the full weights for sampling (not supported;
`bind` refuses a sharded model).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from flowlm.errors import ConfigError
from flowlm.rl.stats import stat_columns
from flowlm.train.losses import IGNORE


class OnPolicyLoader:
    """Batches of `batch_size` prompts completed by the bound policy (see module docstring)."""

    def __init__(self, prompts: Sequence[list[dict[str, Any]]], tokenizer: Any, *, batch_size: int, seed: int,
                 max_new_tokens: int = 256, temperature: float = 1.0, top_p: float = 1.0, max_len: int | None = None,
                 enable_thinking: bool = True, tools: Sequence[str] = (), max_tool_calls: int = 5,
                 tool_workers: int = 0) -> None:
        if not prompts:
            raise ConfigError("on-policy data: no prompts")
        if batch_size <= 0 or batch_size > len(prompts):
            raise ConfigError(f"on-policy data: batch_size {batch_size} must be in 1..{len(prompts)} (the prompts)")
        self.prompts, self.tokenizer = list(prompts), tokenizer
        self.batch_size, self.seed = batch_size, seed
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.max_len, self.enable_thinking = max_len, enable_thinking
        self.tools, self.max_tool_calls, self.tool_workers = list(tools), max_tool_calls, tool_workers
        self.epoch, self.position = 0, 0
        self.engine: Any = None
        self._policy: nn.Module | None = None
        self.stats: Counter[str] = Counter()

    @property
    def batches_per_epoch(self) -> int:
        return len(self.prompts) // self.batch_size

    def bind(self, policy: nn.Module) -> None:
        """Sample from `policy` (read before every batch). Builds the engine on first use."""
        from flowlm.generate.engine import Engine, GenerateConfig

        if any(type(p).__name__ == "DTensor" for p in policy.parameters()):
            raise ConfigError("on-policy distillation runs in one process (the rollout engine needs full weights)")
        self._policy = policy
        cfg = GenerateConfig(max_slots=self.batch_size, enable_thinking=self.enable_thinking)
        self.engine = Engine(policy, self.tokenizer, cfg)
        if self.tools:
            from flowlm.tools.builtin import usable_tools
            from flowlm.tools.engine import ToolEngine

            self.engine = ToolEngine(self.engine, usable_tools(self.tools), max_calls=self.max_tool_calls,
                                     enable_thinking=self.enable_thinking, workers=self.tool_workers)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def _rows(self) -> np.ndarray:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.prompts))
        return perm[self.position * self.batch_size:(self.position + 1) * self.batch_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.engine is None or self._policy is None:
            raise ConfigError("on-policy data: bind(model) before iterating")
        while True:
            if self.position >= self.batches_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
            batch = self.sample(self._rows())
            self.position += 1
            yield batch

    def sample(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Complete `rows` with the current policy; labels mark the completion tokens only."""
        from flowlm.generate.params import FINISH_LENGTH, SamplingParams

        self.engine.update_weights(self._policy.state_dict())
        base = int(np.random.default_rng([self.seed, self.epoch, self.position]).integers(1 << 31))
        params = [SamplingParams(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                                 seed=base + i) for i in range(len(rows))]
        results = self.engine.generate([self.prompts[int(r)] for r in rows], params)
        seqs, stats = [], Counter[str]()
        for res in results:
            if not res.ok:
                raise ConfigError(f"on-policy data: a prompt could not be sampled ({res.error})")
            comp = res.completions[0]
            tool_mask = list(comp.tool_mask or []) or [0] * len(comp.tokens)
            stats["generated_tokens"] += len(comp.tokens) - sum(tool_mask)
            stats["truncated"] += comp.finish_reason == FINISH_LENGTH
            if self.tools:
                stats["tool_calls"] += comp.tool_calls
                stats["tool_errors"] += comp.tool_errors
            ids = (list(res.prompt_ids) + list(comp.tokens))[: self.max_len]
            seqs.append((ids, len(res.prompt_ids), tool_mask))
        self.stats.update(stats)
        return {**self.collate(seqs), **stat_columns(stats, len(seqs))}

    def collate(self, seqs: list[tuple[list[int], int, list[int]]]) -> dict[str, torch.Tensor]:
        """Padded rows; labels on the sampled completion tokens (not the prompt's, not the tools' answers)."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        T = max(len(ids) for ids, _, _ in seqs)
        input_ids = torch.full((len(seqs), T), pad, dtype=torch.int64)
        labels = torch.full((len(seqs), T), IGNORE, dtype=torch.int64)
        for r, (ids, n_prompt, tool_mask) in enumerate(seqs):
            t = torch.tensor(ids, dtype=torch.int64)
            input_ids[r, : len(ids)] = t
            # position j predicts token j + 1: targets are the completion tokens (positions n_prompt - 1 ..)
            target = t[n_prompt:].clone()
            tools = torch.tensor(tool_mask[: len(target)], dtype=torch.bool)
            target[tools] = IGNORE
            labels[r, n_prompt - 1: len(ids) - 1] = target
        return {"input_ids": input_ids, "labels": labels}
