"""Generic adapter: a tiny random Qwen3 behind the Olmo3 forward signature; Olmo3 comes back native."""

from pathlib import Path

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from flowlm.errors import FlowError
from flowlm.model.adapter import HFCausalLM, load_causal_lm, save
from flowlm.model.hf import save_pretrained
from flowlm.model.olmo3 import Olmo3, positions_from_doc_ids

from .conftest import micro_config


@pytest.fixture
def qwen_dir(tmp_path: Path) -> Path:
    cfg = Qwen3Config(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                      tie_word_embeddings=False, pad_token_id=None, eos_token_id=None, bos_token_id=None)
    Qwen3ForCausalLM(cfg).eval().save_pretrained(tmp_path / "qwen")
    return tmp_path / "qwen"


def test_qwen3_packed_equals_separate(qwen_dir: Path) -> None:
    model = load_causal_lm(qwen_dir).eval()
    assert isinstance(model, HFCausalLM)
    a, b = torch.randint(0, 120, (1, 6)), torch.randint(0, 120, (1, 10))
    doc_ids = torch.tensor([[3] * 6 + [5] * 10])
    pos = positions_from_doc_ids(doc_ids)
    one_doc = torch.zeros_like(doc_ids)  # control: the same positions, one document
    other_a = (a + 1) % 120
    with torch.no_grad():
        packed = model(torch.cat([a, b], 1), position_ids=pos, doc_ids=doc_ids)
        alone_a, alone_b = model(a), model(b)
        ctrl = model(torch.cat([a, b], 1), position_ids=pos, doc_ids=one_doc)
        ctrl_other = model(torch.cat([other_a, b], 1), position_ids=pos, doc_ids=one_doc)
    torch.testing.assert_close(packed[:, :6], alone_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[:, 6:], alone_b, atol=1e-5, rtol=0)
    assert not torch.allclose(ctrl_other[:, 6:], ctrl[:, 6:], atol=1e-4)  # without doc_ids, a leaks into b


def test_qwen3_return_hidden_and_lm_head(qwen_dir: Path) -> None:
    model = load_causal_lm(qwen_dir).eval()
    ids = torch.randint(0, 120, (2, 9))
    with torch.no_grad():
        hidden = model(ids, return_hidden=True)
        assert hidden.shape == (2, 9, 32)
        torch.testing.assert_close(model.lm_head(hidden), model(ids), atol=1e-5, rtol=0)


def test_eager_attention_gets_additive_mask(qwen_dir: Path) -> None:
    model = load_causal_lm(qwen_dir).eval()
    model.hf.config._attn_implementation = "eager"
    a, b = torch.randint(0, 120, (1, 5)), torch.randint(0, 120, (1, 4))
    doc_ids = torch.tensor([[0] * 5 + [1] * 4])
    with torch.no_grad():
        packed = model(torch.cat([a, b], 1), position_ids=positions_from_doc_ids(doc_ids), doc_ids=doc_ids)
        torch.testing.assert_close(packed[:, 5:], model(b), atol=1e-5, rtol=0)


def test_adapted_save_round_trip(qwen_dir: Path, tmp_path: Path) -> None:
    model = load_causal_lm(qwen_dir).eval()
    save(model, tmp_path / "again", extra_meta={"stage": "sft"})
    again = load_causal_lm(tmp_path / "again").eval()
    ids = torch.randint(0, 120, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), atol=0, rtol=0)


def test_olmo3_checkpoint_loads_native(tmp_path: Path) -> None:
    native = Olmo3(micro_config()).eval()
    save_pretrained(native, None, tmp_path / "o")
    loaded = load_causal_lm(tmp_path / "o")
    assert isinstance(loaded, Olmo3)
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), native(ids), atol=0, rtol=0)


def test_missing_directory_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(FlowError, match="not a checkpoint directory"):
        load_causal_lm(tmp_path / "nope")


def test_adapter_forward_with_labels_equals_the_loss_of_its_logits(tmp_path):
    """`HFCausalLM.forward(labels=)` (chunked head + loss) equals `lm_loss_sum` on its own logits."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from flowlm.model.adapter import load_causal_lm
    from flowlm.train.losses import lm_loss_sum

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    Qwen3ForCausalLM(cfg).save_pretrained(tmp_path / "q")
    model = load_causal_lm(tmp_path / "q")
    ids = torch.randint(0, 96, (2, 12))
    labels = torch.randint(0, 96, (2, 12))
    labels[:, :4] = -100
    doc_ids = torch.tensor([[0] * 6 + [1] * 6] * 2)
    total, z, n = model(ids, doc_ids=doc_ids, labels=labels, z_loss=1e-3)
    ref_total, ref_z, ref_n = lm_loss_sum(model(ids, doc_ids=doc_ids), labels, 1e-3)
    assert n == ref_n == 16
    torch.testing.assert_close(total, ref_total, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z, ref_z, rtol=1e-5, atol=1e-5)
