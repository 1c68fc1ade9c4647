"""Fixtures shared by the estimator tests."""

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach the network


def make_tiny_bert(path, *, seed=0, **overrides):
    """A random 2-block BERT (hidden 16) saved as a Hugging Face directory: config.json, model.safetensors and a
    50-word BertTokenizer vocabulary ([PAD]=0, [UNK], [CLS]=2, [SEP]=3, [MASK], w0..w44)."""
    import torch
    from transformers import BertConfig, BertModel

    cfg = dict(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    cfg.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(BertConfig(**cfg)).save_pretrained(path, safe_serialization=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(45)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    return path


@pytest.fixture
def tiny_bert_dir(tmp_path):
    pytest.importorskip("transformers")
    return make_tiny_bert(tmp_path / "tiny-bert")
