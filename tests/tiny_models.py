"""Tiny models that tests build on the spot (no download): a random BERT saved as a Hugging Face directory."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path


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


def zip_directory(directory: Path, out: Path, *, top: str | None = None) -> Path:
    """Zip every file under ``directory`` (inside a folder ``top`` when given), as a user would."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(directory.rglob("*")):
            if p.is_file():
                rel = p.relative_to(directory).as_posix()
                zf.write(p, f"{top}/{rel}" if top else rel)
    return out
