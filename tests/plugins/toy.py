"""Test plugin (loaded through FLOWLM_PLUGINS): a toy objective, a toy stage kind and crash hooks.

- objective `seq_mean`: the mean token cross-entropy of each row, averaged over rows (unit: sequences);
  metrics `sequences` (Sum), `tokens_per_seq` (Mean) and `max_seq_loss` (Max).
- stage kind `wordcount`: counts the words of a file it declares as its input.
- `FLOWLM_TOY_KILL_AT_CALL=N`: the N-th `seq_mean` loss call of the process kills it (SIGKILL).
- `FLOWLM_TOY_KILL_BEFORE_DONE=STAGE`: the process kills itself when the runner is about to mark STAGE
  done (after its final checkpoint, export and evaluation).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any, Literal

import torch.nn.functional as F

from flowlm.config import Strict
from flowlm.flow.stages import StageKind, register
from flowlm.train.objectives import LossOutput, Max, Mean, Objective, ObjectiveConfig, Sum, register_objective

_calls = 0


class SeqMeanConfig(ObjectiveConfig):
    name: Literal["seq_mean"] = "seq_mean"
    scale: float = 1.0


@register_objective
class SeqMeanObjective(Objective):
    name = "seq_mean"
    Config = SeqMeanConfig
    unit = "sequences"

    def count_units(self, batch):
        return int(((batch["labels"] != -100).sum(dim=1) > 0).sum())

    def loss(self, model, batch):
        global _calls
        _calls += 1
        if os.environ.get("FLOWLM_TOY_KILL_AT_CALL") == str(_calls):
            os.kill(os.getpid(), signal.SIGKILL)
        logits = model(batch["input_ids"], position_ids=batch["position_ids"], doc_ids=batch["doc_ids"])
        labels = batch["labels"]
        ce = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
        n = (labels != -100).sum(dim=1)
        rows = n > 0
        per_seq = ce.sum(dim=1)[rows] / n[rows]
        return LossOutput(self.cfg.scale * per_seq.sum(), {
            "sequences": Sum(int(rows.sum())),
            "tokens_per_seq": Mean(n[rows].sum().float(), int(rows.sum())),
            "max_seq_loss": Max(per_seq.detach().max()),
        })


class WordCountConfig(Strict):
    kind: Literal["wordcount"] = "wordcount"
    source: str


def _wc_inputs(ctx, name, cfg):
    return [cfg.source]


def _wc_run(ctx, name, cfg) -> tuple[dict[str, str], dict[str, Any]]:
    words = len(open(cfg.source).read().split())
    out = ctx.path(name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "count.json").write_text(json.dumps({"words": words}))
    return {"count": f"{name}/count.json"}, {"words": words}


register(StageKind(name="wordcount", config=WordCountConfig, run=_wc_run, inputs=_wc_inputs))


def _install_kill_before_done() -> None:
    stage = os.environ.get("FLOWLM_TOY_KILL_BEFORE_DONE")
    if not stage:
        return
    from flowlm.flow.record import FlowRecord

    finish = FlowRecord.finish

    def finish_or_die(self, name, *args, **kwargs):
        if name == stage:
            os.kill(os.getpid(), signal.SIGKILL)
        return finish(self, name, *args, **kwargs)

    FlowRecord.finish = finish_or_die


_install_kill_before_done()
