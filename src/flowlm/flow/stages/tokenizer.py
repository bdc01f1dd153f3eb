"""Stage kind `tokenizer`: train a byte-level BPE on the pretrain corpus (or reuse one), then tokenize every
corpus of the preceding corpus stage into token stores: text documents and chat examples as `store:<corpus>`
(chat with assistant label masks), preference rows as aligned chosen / rejected stores `pairs:<corpus>`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from flowlm.config import Strict
from flowlm.flow.stages.registry import StageContext, StageKind, StageResult, register


class TokenizerStageConfig(Strict):
    """`vocab_size` BPE trained on the first `train_bytes` of the pretrain corpus, or an existing tokenizer."""

    kind: Literal["tokenizer"] = "tokenizer"
    vocab_size: int = Field(8192, ge=300, le=1 << 20)
    path: str | None = Field(None, description="use this existing HF tokenizer instead of training")
    train_bytes: int = Field(2_000_000, gt=0)
    enable_thinking: bool = Field(True, description="chat corpora: the mode of conversations without a /think or "
                                                    "/no_think flag (Qwen3 convention; the last flag wins)")
    assistant_loss: Literal["all", "last"] = Field("all", description="chat corpora: label every assistant turn, "
                                                                      "or only the final one")


def _inputs(ctx: StageContext, name: str, cfg: TokenizerStageConfig) -> list[str]:
    return [ctx.latest("corpus", name)] + ([cfg.path] if cfg.path else [])


def run(ctx: StageContext, name: str, cfg: TokenizerStageConfig) -> StageResult:
    """Outputs `tokenizer` and `store:<corpus>` for every corpus; chat corpora get assistant label masks."""
    from flowlm.data.store import tokenize_to_store
    from flowlm.errors import FlowError
    from flowlm.data.chat import is_pair_row
    from flowlm.data.pairs import tokenize_pairs
    from flowlm.flow.stages.corpus import corpus_names
    from flowlm.jsonlines import iter_json_objects
    from flowlm.model.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer

    corpus = ctx.outputs[ctx.latest("corpus", name)]
    out = ctx.path(name)
    tok_dir = out / "tokenizer"
    if cfg.path:
        tok = load_tokenizer(cfg.path)
        tok.save_pretrained(str(tok_dir))
    else:
        if "pretrain" not in corpus:
            raise FlowError(f"stage '{name}': training a tokenizer needs a 'pretrain' corpus (or set path:)")
        texts, budget = [], cfg.train_bytes
        for _, doc in iter_json_objects(ctx.path(corpus["pretrain"])):
            texts.append(doc["text"])
            budget -= len(doc["text"])
            if budget <= 0:
                break
        tok = train_tokenizer(texts, cfg.vocab_size, tok_dir)
    outputs = {"tokenizer": f"{name}/tokenizer"}
    metrics: dict[str, Any] = {"vocab_size": len(tok)}
    for cname in corpus_names(corpus):
        docs = [row for _, row in iter_json_objects(ctx.path(corpus[cname]))]
        if docs and is_pair_row(docs[0]):  # preference rows: aligned chosen / rejected stores
            stores = tokenize_pairs(tok, docs, out / "pairs" / cname, source=corpus[cname],
                                    enable_thinking=cfg.enable_thinking)
            outputs[f"pairs:{cname}"] = f"{name}/pairs/{cname}"
            metrics[f"{cname}_pairs"] = len(stores["chosen"])
            metrics[f"{cname}_tokens"] = int(sum(st.n_tokens for st in stores.values()))
            continue
        store = tokenize_to_store(tok, docs, out / "stores" / cname, enable_thinking=cfg.enable_thinking,
                                  assistant_loss=cfg.assistant_loss, source=str(ctx.path(corpus[cname])))
        outputs[f"store:{cname}"] = f"{name}/stores/{cname}"
        metrics[f"{cname}_tokens"] = int(store.n_tokens)
    metrics["tokenizer_hash"] = tokenizer_hash(tok_dir)
    return outputs, metrics


register(StageKind(name="tokenizer", config=TokenizerStageConfig, run=run, inputs=_inputs, main_rank_only=True,
                   default_for=("tokenizer",)))
