"""Document/token accounting shared by every pipeline step.

Every step records what came in, what it kept and what it dropped *by reason*; `StepStats.check()`
asserts conservation (in = kept + sum(dropped)) so nothing can disappear silently. Upsampling adds
copies, which are counted separately in `added` (out = kept + added) instead of breaking conservation.
Malformed input lines are quarantined (file:line + reason) and counted as the drop reason `malformed`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from flowlm.errors import FlowError

_WORD = re.compile(r"\S+")


def count_tokens(text: str) -> int:
    """Whitespace-token count: a cheap, tokenizer-free proxy used for budgets and accounting."""
    return len(_WORD.findall(text))


TokenCounter = Callable[[str], int]


@dataclass
class DocTokenCount:
    """A (documents, tokens) pair."""

    docs: int = 0
    tokens: int = 0

    def add(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens

    def to_dict(self) -> dict[str, int]:
        return {"docs": self.docs, "tokens": self.tokens}


@dataclass
class StepStats:
    """Counts for one step. Token drops may come from kept documents (e.g. substring removal)."""

    name: str
    inp: DocTokenCount = field(default_factory=DocTokenCount)
    kept: DocTokenCount = field(default_factory=DocTokenCount)
    added: DocTokenCount = field(default_factory=DocTokenCount)
    dropped: dict[str, DocTokenCount] = field(default_factory=dict)
    # kept documents whose text was rewritten (PII masking, substring removal): docs touched and
    # tokens removed. `kept` counts tokens as they came in, so conservation stays exact.
    modified: dict[str, DocTokenCount] = field(default_factory=dict)

    def record_in(self, tokens: int, docs: int = 1) -> None:
        self.inp.add(docs, tokens)

    def record_kept(self, tokens: int, docs: int = 1) -> None:
        self.kept.add(docs, tokens)

    def record_added(self, tokens: int, docs: int = 1) -> None:
        self.added.add(docs, tokens)

    def record_drop(self, reason: str, tokens: int, docs: int = 1) -> None:
        self.dropped.setdefault(reason, DocTokenCount()).add(docs, tokens)

    def record_modified(self, reason: str, tokens_removed: int) -> None:
        self.modified.setdefault(reason, DocTokenCount()).add(1, tokens_removed)

    def out(self) -> tuple[int, int]:
        """(docs, tokens) this step hands to the next one."""
        mod = sum(c.tokens for c in self.modified.values())
        return self.kept.docs + self.added.docs, self.kept.tokens + self.added.tokens - mod

    def merge(self, other: "StepStats") -> None:
        """Add another shard's counts for the same step."""
        self.inp.add(other.inp.docs, other.inp.tokens)
        self.kept.add(other.kept.docs, other.kept.tokens)
        self.added.add(other.added.docs, other.added.tokens)
        for reason, c in other.dropped.items():
            self.record_drop(reason, c.tokens, c.docs)
        for reason, c in other.modified.items():
            self.modified.setdefault(reason, DocTokenCount()).add(c.docs, c.tokens)

    def conserved(self) -> bool:
        d_docs = sum(c.docs for c in self.dropped.values())
        d_tok = sum(c.tokens for c in self.dropped.values())
        return self.inp.docs == self.kept.docs + d_docs and self.inp.tokens == self.kept.tokens + d_tok

    def check(self) -> None:
        if not self.conserved():
            raise FlowError(f"accounting: step '{self.name}' does not conserve documents/tokens: "
                            f"{json.dumps(self.to_dict())}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "in": self.inp.to_dict(),
            "kept": self.kept.to_dict(),
            "added": self.added.to_dict(),
            "out": dict(zip(("docs", "tokens"), self.out())),
            "dropped": {k: v.to_dict() for k, v in sorted(self.dropped.items())},
            "modified": {k: v.to_dict() for k, v in sorted(self.modified.items())},
            "conserved": self.conserved(),
        }

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> "StepStats":
        s = cls(name)
        s.inp = DocTokenCount(**d["in"])
        s.kept = DocTokenCount(**d["kept"])
        s.added = DocTokenCount(**d.get("added", {"docs": 0, "tokens": 0}))
        s.dropped = {k: DocTokenCount(**v) for k, v in d["dropped"].items()}
        s.modified = {k: DocTokenCount(**v) for k, v in d.get("modified", {}).items()}
        return s


@dataclass
class RunStats:
    """Ordered step stats plus the quarantine list for one pipeline run."""

    steps: dict[str, StepStats] = field(default_factory=dict)
    quarantine: list[dict[str, Any]] = field(default_factory=list)

    def step(self, name: str) -> StepStats:
        if name not in self.steps:
            self.steps[name] = StepStats(name)
        return self.steps[name]

    def merge(self, other: "RunStats") -> None:
        for name, st in other.steps.items():
            self.step(name).merge(st)
        self.quarantine.extend(other.quarantine)

    def check(self) -> None:
        """Raise FlowError unless every step conserves and consecutive steps chain (out_i = in_{i+1})."""
        prev: StepStats | None = None
        for st in self.steps.values():
            st.check()
            if prev is not None:
                out_docs, out_tok = prev.out()
                if (out_docs, out_tok) != (st.inp.docs, st.inp.tokens):
                    raise FlowError(f"accounting: step '{st.name}' input {st.inp.to_dict()} != step "
                                    f"'{prev.name}' output docs={out_docs} tokens={out_tok}")
            prev = st

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": {k: v.to_dict() for k, v in self.steps.items()},
            "quarantine": {"count": len(self.quarantine), "items": self.quarantine[:1000]},
            "conserved": all(s.conserved() for s in self.steps.values()),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunStats":
        rs = cls()
        for name, sd in d["steps"].items():
            rs.steps[name] = StepStats.from_dict(name, sd)
        rs.quarantine = list(d.get("quarantine", {}).get("items", []))
        return rs

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False))
