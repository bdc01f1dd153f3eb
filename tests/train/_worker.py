"""Subprocess worker for engine tests: trains a small Olmo3 on a synthetic token store.

    python _worker.py OUT_DIR STORE_DIR STEPS [--resume]
Under torchrun it runs data-parallel with FSDP2 on gloo. Prints nothing; metrics go to OUT_DIR.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from flowlm.data.loader import PackedLoader
from flowlm.data.pack import PackedDataset
from flowlm.data.store import TokenStore
from flowlm.model.config import ModelConfig
from flowlm.model.olmo3 import Olmo3
from flowlm.train.config import EngineConfig
from flowlm.train.engine import Trainer
from flowlm.train.objectives.lm import LMObjective
from flowlm.train.parallel import init_world, parallelize

SMALL = dict(vocab_size=128, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=128, max_seq_len=64, sliding_window=16)


def make_store(path: Path, n_docs: int = 64, seed: int = 0) -> TokenStore:
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(1, 128, (int(n),), generator=g).tolist() for n in torch.randint(5, 90, (n_docs,), generator=g)]
    return TokenStore.write(path, docs, vocab_size=128, tokenizer_hash="synthetic")


def build(out: Path, store_dir: Path, steps: int, grad_accum: int = 1, checkpoint_every: int = 2, tie: bool = False):
    world = init_world()
    torch.manual_seed(0)
    model = Olmo3(ModelConfig.preset("tiny", **SMALL, tie_embeddings=tie))
    cfg = EngineConfig(steps=steps, seq_len=64, batch_size=8, grad_accum=grad_accum, checkpoint_every=checkpoint_every, keep_last=3)
    loader = PackedLoader(PackedDataset(TokenStore.open(store_dir), 64, seed=0), 8, seed=0)
    if world.distributed:
        loader = loader.shard(world.rank, world.size)
    model = parallelize(model, world)
    return Trainer(model, LMObjective(z_loss=1e-4), loader, cfg, out, world=world, show_progress=False)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, store_dir, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    trainer = build(out, store_dir, steps)
    if "--resume" in sys.argv:
        trainer.resume()
    trainer.fit()
    if trainer.world.distributed:
        torch.distributed.destroy_process_group()
