"""Proxy runs: train a tiny OLMo-3 from scratch on some documents, report BPB per held-out task.

Used by mix optimisation (`flowlm.data.mix.make_proxy_runner` -> `run_proxy(mix, seed, **kw)`) and by
data ablations (`benchmarks/upsample_ablation.py` -> `run_docs(docs, seed)`). Both go through the
real training engine (`Trainer` + `LMObjective` on a `TokenStore` -> `PackedDataset` -> `PackedLoader`)
and score with `flowlm.eval.bpb.evaluate_bpb` on `builtin.bpb_eval_sets(eval_seed)`.

Comparability: every proxy uses ONE byte-level BPE trained once on a fixed built-in sample (never on
the documents under test) and cached per process (and in `tokenizer_dir` when given), the same model
shape, the same number of optimizer steps and tokens per step, and the same eval items. Only the
data and the seed change. A proxy run is ~10-20 s on 2 CPU cores with the defaults (`ProxyCfg`).

`run_proxy` samples a corpus of `budget_tokens` (default: the tokens the run trains on) from
`domains` at the mix weights: a domain with fewer tokens than its share is repeated (whole fresh
permutations, then a partial one), so a mix may ask for repetition; `domain_tokens` gives the
available tokens per domain for `mix.solve_mix`'s repetition cap.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowlm.errors import ConfigError, FlowError


@dataclass(frozen=True)
class ProxyCfg:
    """Model shape, training budget and eval size of a proxy run (any field can be a `**kw`)."""

    vocab_size: int = 1024
    hidden_size: int = 96
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 80
    lr: float = 3e-3
    warmup_steps: int = 8
    eval_items: int = 100  # per task
    eval_seed: int = 0  # fixed: every proxy is scored on the same items whatever its training seed
    threads: int = 1  # 2 threads on the shared 2-core box measured ~14x slower per step (oversubscription)
    tokenizer_bytes: int = 1_000_000  # size of the built-in sample the shared tokenizer is trained on

    @property
    def train_tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len


def proxy_cfg(**kw: Any) -> tuple[ProxyCfg, dict[str, Any]]:
    """Split `kw` into a `ProxyCfg` and the remaining options (`tokenizer_dir`)."""
    fields = {f.name for f in dataclasses.fields(ProxyCfg)}
    rest = {k: v for k, v in kw.items() if k not in fields}
    unknown = sorted(set(rest) - {"tokenizer_dir"})
    if unknown:
        raise ConfigError(f"proxy: unknown option(s) {unknown}; allowed: {sorted(fields | {'tokenizer_dir'})}")
    return ProxyCfg(**{k: v for k, v in kw.items() if k in fields}), rest


# -- the shared tokenizer ------------------------------------------------------------------------------
_TOKENIZERS: dict[str, Any] = {}


def _tokenizer_key(vocab_size: int, n_bytes: int) -> str:
    return hashlib.sha256(f"proxy-bpe|builtin.pretrain_docs(0)|{n_bytes}|{vocab_size}".encode()).hexdigest()[:16]


def proxy_tokenizer(vocab_size: int = 1024, n_bytes: int = 1_000_000, tokenizer_dir: str | Path | None = None) -> Any:
    """The one tokenizer all proxies share: BPE on a fixed built-in sample, trained once.

    Cached in this process by a hash of its recipe; with `tokenizer_dir` also on disk under
    `tokenizer_dir/proxy-tok-<hash>` (reused by later processes); without it the files are written to a
    temporary directory that is removed at once (the returned tokenizer lives in memory)."""
    from flowlm.data.builtin import pretrain_docs
    from flowlm.model.tokenizer import load_tokenizer, train_tokenizer

    key = _tokenizer_key(vocab_size, n_bytes)
    if key in _TOKENIZERS:
        return _TOKENIZERS[key]
    if tokenizer_dir is not None and (Path(tokenizer_dir) / f"proxy-tok-{key}" / "tokenizer.json").exists():
        tok = load_tokenizer(Path(tokenizer_dir) / f"proxy-tok-{key}")
    else:
        texts = [d["text"] for d in pretrain_docs(0, max_bytes=n_bytes)]
        if tokenizer_dir is not None:
            tok = train_tokenizer(texts, vocab_size, Path(tokenizer_dir) / f"proxy-tok-{key}")
        else:
            with tempfile.TemporaryDirectory(prefix="flowlm-proxy-tok-") as tmp:
                tok = train_tokenizer(texts, vocab_size, Path(tmp) / f"proxy-tok-{key}")
    _TOKENIZERS[key] = tok
    return tok


def encode(tok: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text followed by EOS (as `tokenize_to_store` does)."""
    if not texts:
        return []
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    return [list(x) + [tok.eos_token_id] for x in ids]


@functools.lru_cache(maxsize=4)
def _eval_sets(seed: int, n: int) -> dict[str, list[dict[str, str]]]:
    from flowlm.data.builtin import bpb_eval_sets

    return bpb_eval_sets(seed, n_per_task=n)


# -- one run -------------------------------------------------------------------------------------------
def _build_model(cfg: ProxyCfg, vocab_size: int, seed: int) -> torch.nn.Module:
    from flowlm.model.config import ModelConfig
    from flowlm.model.olmo3 import Olmo3

    mcfg = ModelConfig.preset(
        "tiny", vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, intermediate_size=cfg.intermediate_size,
        max_seq_len=max(2 * cfg.seq_len, 256), sliding_window=cfg.seq_len,
    )
    torch.manual_seed(seed)
    return Olmo3(mcfg)


def train_and_eval(token_docs: list[list[int]], seed: int, cfg: ProxyCfg, tok: Any) -> dict[str, float]:
    """Train a fresh proxy on tokenized documents for `cfg.steps` steps; BPB per eval task + mean."""
    from flowlm.data.loader import PackedLoader
    from flowlm.data.pack import PackedDataset
    from flowlm.data.store import TokenStore
    from flowlm.eval.bpb import evaluate_bpb
    from flowlm.model.tokenizer import tokenizer_hash
    from flowlm.train.config import EngineConfig, OptimConfig, ScheduleConfig
    from flowlm.train.engine import Trainer
    from flowlm.train.objectives.lm import LMObjective

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="flowlm-proxy-") as tmp:
            store = TokenStore.write(Path(tmp) / "store", token_docs, vocab_size=len(tok),
                                     tokenizer_hash=tokenizer_hash(tok),
                                     meta={"eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id})
            loader = PackedLoader(PackedDataset(store, cfg.seq_len, seed=seed), cfg.batch_size, seed=seed)
            if loader.batches_per_epoch < 1:
                raise FlowError(f"proxy: {store.n_tokens} tokens do not fill one batch of "
                                f"{cfg.batch_size}x{cfg.seq_len}")
            model = _build_model(cfg, len(tok), seed)
            ecfg = EngineConfig(steps=cfg.steps, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                                optim=OptimConfig(lr=cfg.lr),
                                schedule=ScheduleConfig(warmup_steps=cfg.warmup_steps, final_lr_ratio=0.1),
                                checkpoint_every=cfg.steps, keep_last=1, log_every=cfg.steps, seed=seed)
            Trainer(model, LMObjective(), loader, ecfg, Path(tmp) / "run", show_progress=False,
                    description="proxy").fit()
            model.eval()
            res = evaluate_bpb(model, tok, _eval_sets(cfg.eval_seed, cfg.eval_items), max_items=cfg.eval_items,
                               row_len=2 * cfg.seq_len, batch_tokens=16 * cfg.seq_len)
    finally:
        torch.set_num_threads(threads)
    out = {k: float(v) for k, v in res.items() if k == "bpb" or k.endswith("/bpb")}
    if not all(math.isfinite(v) for v in out.values()):
        raise FlowError(f"proxy: non-finite BPB {out}")
    return out


def run_docs(docs: list[dict[str, Any]], seed: int, **kw: Any) -> dict[str, float]:
    """Train a proxy on `docs` (`{text, ...}` dicts or strings) for a fixed token budget
    (`steps x batch_size x seq_len`; the corpus is cycled or only partly seen as its size dictates).
    Returns `{task}/bpb` per built-in BPB task and `bpb`, their mean."""
    cfg, rest = proxy_cfg(**kw)
    tok = proxy_tokenizer(cfg.vocab_size, cfg.tokenizer_bytes, rest.get("tokenizer_dir"))
    texts = [d if isinstance(d, str) else d["text"] for d in docs]
    return train_and_eval(encode(tok, texts), seed, cfg, tok)


# -- mixes ---------------------------------------------------------------------------------------------
_ENCODED: dict[tuple[str, str], list[list[int]]] = {}


def _encoded_domain(tok: Any, docs: list[dict[str, Any]]) -> list[list[int]]:
    """Tokenized domain, cached by tokenizer and a hash of the texts (swarms reuse the same domains)."""
    from flowlm.model.tokenizer import tokenizer_hash

    h = hashlib.sha1()
    for d in docs:
        h.update(d["text"].encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    key = (tokenizer_hash(tok), h.hexdigest())
    if key not in _ENCODED:
        if len(_ENCODED) >= 16:  # bounded: a swarm uses a handful of domains
            _ENCODED.pop(next(iter(_ENCODED)))
        _ENCODED[key] = encode(tok, [d["text"] for d in docs])
    return _ENCODED[key]


def domain_tokens(domains: dict[str, list[dict[str, Any]]], **kw: Any) -> dict[str, float]:
    """Available tokens per domain under the proxy tokenizer (for `mix.solve_mix(available=...)`)."""
    cfg, rest = proxy_cfg(**kw)
    tok = proxy_tokenizer(cfg.vocab_size, cfg.tokenizer_bytes, rest.get("tokenizer_dir"))
    return {name: float(sum(map(len, _encoded_domain(tok, docs)))) for name, docs in domains.items()}


def sample_tokens(docs: list[list[int]], target: float, rng: np.random.Generator) -> list[list[int]]:
    """Whole documents in random order until `target` tokens; repeats the domain when it is too small."""
    out: list[list[int]] = []
    total = sum(map(len, docs))
    if target <= 0 or total == 0:
        return out
    n = 0
    while n < target:
        for i in rng.permutation(len(docs)):
            out.append(docs[i])
            n += len(docs[i])
            if n >= target:
                break
    return out


def mix_corpus(mix: dict[str, float], seed: int, domains: dict[str, list[list[int]]],
               budget_tokens: float) -> list[list[int]]:
    """Sample `w_d * budget_tokens` tokens from each domain (weights normalised to sum 1)."""
    unknown = sorted(set(mix) - set(domains))
    if unknown:
        raise ConfigError(f"proxy: mix names unknown domain(s) {unknown}; domains: {sorted(domains)}")
    if any(w < 0 or not math.isfinite(w) for w in mix.values()) or sum(mix.values()) <= 0:
        raise ConfigError(f"proxy: mix weights must be finite, >= 0 and not all 0: {mix}")
    z = sum(mix.values())
    rng = np.random.default_rng([seed, 4231])
    corpus: list[list[int]] = []
    for name in sorted(mix):
        corpus += sample_tokens(domains[name], mix[name] / z * budget_tokens, rng)
    return corpus


def run_proxy(mix: dict[str, float], seed: int, *, domains: dict[str, list[dict[str, Any]]],
              budget_tokens: float | None = None, **kw: Any) -> dict[str, float]:
    """Sample a corpus from `domains` at the `mix` weights under `budget_tokens` (default: the run's
    training tokens, so a mix is seen about once), train a proxy on it and return BPB per task + mean."""
    cfg, rest = proxy_cfg(**kw)
    tok = proxy_tokenizer(cfg.vocab_size, cfg.tokenizer_bytes, rest.get("tokenizer_dir"))
    enc = {name: _encoded_domain(tok, docs) for name, docs in domains.items() if mix.get(name, 0) > 0}
    corpus = mix_corpus(mix, seed, {**{k: [] for k in domains}, **enc}, budget_tokens or cfg.train_tokens)
    return train_and_eval(corpus, seed, cfg, tok)


def builtin_domains(seed: int = 0, max_bytes: int = 4_000_000) -> dict[str, list[dict[str, Any]]]:
    """The built-in pretraining corpus grouped by `source` (`stdlib-code`, `stdlib-docstrings`, `math`)."""
    from flowlm.data.builtin import pretrain_docs

    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in pretrain_docs(seed, max_bytes):
        out[d["source"]].append(d)
    return dict(out)
