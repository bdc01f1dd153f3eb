"""Does the tiny OLMo-3 learn to copy from its context? The probe behind docs/post.md's copy-circuit tables.

A pure copy task: random token sequences of `--seq` tokens, each written twice in one row, `--batch` rows
per step, AdamW at `--lr` (constant, no weight decay). The loss on the second copy falls far below the
first's (chance, ~9 nats over 8,192 tokens) only once the model has formed a copy (induction) circuit.
Variants, each from the same seed: `untied` is the tiny preset as the default flow trains it (untied
embeddings, QK-norm); `tied` ties the input and output embeddings; `tiedinit` keeps them untied but starts
the LM head as a copy of the input embedding (so the two begin aligned, then train apart); `+noqk` removes
QK-norm (both norms replaced by the identity), as in `tied+noqk`. `--vocab N` shrinks the preset's
vocabulary to N tokens (the random sequences then use only those).
With `--init CKPT` the runs start from a trained checkpoint instead of a random init, and every report
also gives the list probe (nats per token of 12 two-digit numbers, first and repeated:
`x = [..]\\ny = [..]`), which says whether the language model survived.

    python benchmarks/copy_probe.py                       # untied, tied, tied+noqk from random init, 400 steps
    python benchmarks/copy_probe.py --seq 64 --variants tied
    python benchmarks/copy_probe.py --variants untied,tiedinit --vocab 2048
    python benchmarks/copy_probe.py --init runs/tiny/long_context/checkpoints/step_0000012 --variants untied

Ends with `RESULT {json}`: `variants` (name -> `steps`, `first`, `repeat`, and with `--init` `list_first`,
`list_repeat`, each a list over the reports), `seq`, `batch`, `lr`, `vocab`, `init`, `smoke`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time

import torch
from torch import nn
from torch.nn import functional as F

from flowlm.model.config import PRESETS
from flowlm.model.olmo3 import Olmo3


def build(variant: str, init: str | None, vocab: int | None = None) -> tuple[Olmo3, object | None]:
    """The model of one variant and, with `init`, the checkpoint's tokenizer."""
    if init:
        from flowlm.model.hf import load_native
        from flowlm.model.tokenizer import load_tokenizer

        if variant != "untied" or vocab:
            raise SystemExit(f"--init: only the untied variant at the checkpoint's vocabulary, got {variant!r}")
        return load_native(init)[0].train(), load_tokenizer(init)
    base, *extra = variant.split("+")
    if base not in ("untied", "tied", "tiedinit") or set(extra) - {"noqk"}:
        raise SystemExit(f"unknown variant {variant!r} (untied, tied or tiedinit, optionally +noqk)")
    torch.manual_seed(0)
    cfg = dataclasses.replace(PRESETS["tiny"], tie_embeddings=base == "tied")
    model = Olmo3(dataclasses.replace(cfg, vocab_size=vocab) if vocab else cfg)
    if base == "tiedinit":
        with torch.no_grad():
            model.lm_head.weight.copy_(model.model.embed_tokens.weight)
    if "noqk" in extra:
        for layer in model.model.layers:
            layer.self_attn.q_norm, layer.self_attn.k_norm = nn.Identity(), nn.Identity()
    return model.train(), None


@torch.no_grad()
def list_probe(model: Olmo3, tok: object) -> tuple[float, float]:
    """Nats per token of a list of 12 two-digit numbers and of its repeat, over 16 lists."""
    model.eval()
    rng, first, repeat = random.Random(1), 0.0, 0.0
    for _ in range(16):
        nums = ", ".join(str(rng.randint(10, 99)) for _ in range(12))
        n = len(tok.encode(nums, add_special_tokens=False))
        ids = tok.encode(f"x = [{nums}]\ny = [{nums}]\n", add_special_tokens=False)
        x = torch.tensor([ids])
        lp = torch.log_softmax(model(x)[0, :-1].float(), -1).gather(-1, x[0, 1:, None])[:, 0]
        first += -lp[2:2 + n].mean().item()
        repeat += -lp[len(ids) - 2 - n:len(ids) - 2].mean().item()
    model.train()
    return first / 16, repeat / 16


def run(variant: str, args: argparse.Namespace) -> dict[str, list[float]]:
    model, tok = build(variant, args.init, args.vocab)
    vocab = model.cfg.vocab_size
    special = set(getattr(tok, "all_special_ids", []) or [])
    pool = torch.tensor([i for i in range(vocab) if i not in special])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    out: dict[str, list[float]] = {"steps": [], "first": [], "repeat": []}
    if tok is not None:
        out |= {"list_first": [], "list_repeat": []}
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        seq = pool[torch.randint(len(pool), (args.batch, args.seq), generator=gen)]
        x = torch.cat([seq, seq], 1)
        nll = F.cross_entropy(model(x)[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1), reduction="none")
        nll = nll.view(args.batch, -1)
        opt.zero_grad()
        nll.mean().backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            out["steps"].append(step)
            out["first"].append(round(nll[:, :args.seq - 1].mean().item(), 3))
            out["repeat"].append(round(nll[:, args.seq:].mean().item(), 3))
            line = f"{variant:9s} step {step:4d}: first copy {out['first'][-1]:.2f}  repeat {out['repeat'][-1]:.2f}"
            if tok is not None:
                a, b = list_probe(model, tok)
                out["list_first"].append(round(a, 3))
                out["list_repeat"].append(round(b, 3))
                line += f"  list probe {a:.2f} / {b:.2f}"
            print(f"{line}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="untied,tied,tied+noqk",
                    help="comma-separated: untied, tied, tiedinit, each optionally +noqk")
    ap.add_argument("--init", help="start from this checkpoint (untied only) instead of a random init")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seq", type=int, default=24, help="tokens per sequence (a row holds it twice)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--vocab", type=int, help="shrink the tiny preset's vocabulary to this many tokens")
    ap.add_argument("--every", type=int, default=50, help="report every N steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", "--quick", action="store_true", help="2 steps of 8-token sequences: checks it runs")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.seq, args.batch, args.every = 2, 8, 2, 1
    torch.set_num_threads(args.threads)
    if args.init:
        print(f"start: list probe {' / '.join(f'{v:.2f}' for v in list_probe(*build('untied', args.init)))}")
    results = {v: run(v, args) for v in args.variants.split(",")}
    print("RESULT " + json.dumps({"variants": results, "seq": args.seq, "batch": args.batch, "lr": args.lr,
                                  "vocab": args.vocab, "init": args.init, "smoke": args.smoke}))


if __name__ == "__main__":
    main()
