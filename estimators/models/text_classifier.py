"""A pretrained encoder plus a new classification head: the θ₀ of fine-tuning d90 (docs/methods.md §4.5; issue 16).

:func:`build_text_classifier` turns a ``{"arch": "pretrained", ...}`` spec into a :class:`TextClassifier` — a
private copy of the process-wide pretrained encoder (:func:`estimators.models.pretrained.get_pretrained`) and a
``Linear(hidden, n_classes)`` head drawn from ``seed``. Its input is the (B, L) token-id matrix of
:func:`estimators.text.tokenize_texts` (int64, or floats holding integers: the subspace estimator casts X to
float32, which is exact for ids below 2^24); the attention mask is ``ids != pad_id``.

The trainable subset (``spec.train_blocks``): frozen weights become buffers, so the model's parameters are
exactly what direct training and the subspace wrappers (:mod:`estimators.subspace.wrapper`) train and D counts. Dropout is
off for good (the encoder stays in eval mode even under ``.train()``), so the network is a deterministic function
of θ — which is what DID/SAID train and what makes θ_d = 0 reproduce the pretrained outputs exactly.

    >>> net = build_text_classifier({"arch": "pretrained", "train_blocks": 1}, 3, seed=0)   # doctest: +SKIP
    >>> [n for n, _ in net.named_parameters()][:2]                                       # doctest: +SKIP
    ['encoder.encoder.layer.5.attention.self.query.weight', 'encoder.encoder.layer.5.attention.self.query.bias']
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from estimators.base import EstimatorError
from estimators.models.pretrained import MINILM, get_pretrained
from estimators.models.spec import PretrainedSpec, parse_model_spec
from estimators.text.embed import pool

_BLOCK = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def block_index(name: str) -> int | None:
    """The transformer block a parameter belongs to (``encoder.layer.3.…`` → 3), or None (embeddings, head)."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


class TextClassifier(nn.Module):
    """encoder(ids) → pooled last hidden state → Linear head. ``forward(x)`` takes (B, L) token ids."""

    #: transformers' attention-mask helpers branch on tensor values, which torch.func.vmap cannot trace
    vmap_safe = False

    def __init__(self, encoder: nn.Module, n_classes: int, *, pad_id: int, pooling: str = "mean") -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(int(encoder.config.hidden_size), int(n_classes))
        self.pad_id = int(pad_id)
        self.pooling = pooling
        self.encoder.eval()
        #: blocks below this index (and the embeddings) are frozen: their output is computed once per text
        self.frozen_blocks = 0
        self._prefix_cache: dict[bytes, Tensor] = {}
        self._prefix_bytes = 0

    def train(self, mode: bool = True) -> TextClassifier:
        super().train(mode)
        self.encoder.eval()  # no dropout: θ alone determines the outputs
        return self

    def freeze_prefix(self, n_blocks: int) -> None:
        """Declare the embeddings and the first ``n_blocks`` blocks frozen (their parameters must have
        ``requires_grad`` off and must never change): their output per text is then cached and only the blocks
        above run on every call — the same function, at the cost of the trained blocks alone."""
        self.frozen_blocks = int(n_blocks)
        self._prefix_cache = {}
        self._prefix_bytes = 0

    def _blocks(self) -> nn.ModuleList | None:
        inner = getattr(self.encoder, "encoder", None)
        layers = getattr(inner, "layer", None)
        return layers if isinstance(layers, nn.ModuleList) else None

    def _mask4d(self, h: Tensor, mask: Tensor) -> Tensor | None:
        try:
            from transformers.masking_utils import create_bidirectional_mask
        except ImportError:  # transformers 4.x: the classic additive mask
            return (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        return create_bidirectional_mask(config=self.encoder.config, inputs_embeds=h, attention_mask=mask)

    @torch.no_grad()
    def _prefix(self, ids: Tensor, lengths: Tensor, L: int) -> Tensor:
        """Hidden states after the frozen blocks, (B, L, H): the texts not cached yet go through the frozen part
        in one padded batch (the mask makes the padding inert, so a text's states do not depend on its batch
        beyond float rounding), and are cached on their own length."""
        H = int(self.encoder.config.hidden_size)
        out = torch.zeros(ids.shape[0], L, H, dtype=self.head.weight.dtype, device=ids.device)
        todo: list[tuple[int, bytes]] = []
        for i in range(ids.shape[0]):
            key = ids[i, : int(lengths[i])].cpu().numpy().tobytes()
            hit = self._prefix_cache.get(key)
            if hit is None:
                todo.append((i, key))
            else:
                out[i, : hit.shape[0]] = hit.to(out.device)
        if todo:
            rows = ids[[i for i, _ in todo]]
            m = (rows != self.pad_id).to(torch.long)
            h = self.encoder.embeddings(input_ids=rows)
            if self.frozen_blocks:
                mask4 = self._mask4d(h, m)
                for layer in self._blocks()[: self.frozen_blocks]:
                    h = layer(h, mask4)
                    h = h[0] if isinstance(h, tuple) else h
            for j, (i, key) in enumerate(todo):
                n = int(lengths[i])
                out[i, :n] = h[j, :n]
                if self._prefix_bytes < 2**31:  # at most 2 GiB of cached states
                    self._prefix_cache[key] = h[j, :n].detach().clone().cpu()
                    self._prefix_bytes += 4 * n * H
        return out

    def features(self, x: Tensor) -> Tensor:
        ids = x if not x.is_floating_point() else torch.round(x)
        ids = ids.to(torch.long)
        mask = (ids != self.pad_id).to(torch.long)
        blocks = self._blocks()
        if self.frozen_blocks and blocks is not None:
            lengths = mask.sum(1)
            L = max(1, int(lengths.max()))
            mask = mask[:, :L]
            h = self._prefix(ids[:, :L], lengths, L)
            mask4 = self._mask4d(h, mask)
            for layer in blocks[self.frozen_blocks :]:
                h = layer(h, mask4)
                h = h[0] if isinstance(h, tuple) else h
            return pool(h, mask, self.pooling)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return pool(hidden, mask, self.pooling)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def set_trainable_blocks(model: TextClassifier, train_blocks: int | None) -> None:
    """``None``: every weight is a trainable parameter. L: only the last L transformer blocks and the head stay
    parameters; every other weight becomes a buffer (same tensor, same name), so ``parameters()``,
    ``count_params`` and the subspace wrappers see exactly the trained subset while ``forward`` is unchanged, and
    the frozen embeddings and lower blocks are computed once per text (:meth:`TextClassifier.freeze_prefix`)."""
    n_layers = int(getattr(model.encoder.config, "num_hidden_layers", 0))
    if train_blocks is None:
        model.freeze_prefix(0)
        return
    if train_blocks > n_layers:
        raise EstimatorError(f"train_blocks={train_blocks} exceeds the model's {n_layers} transformer blocks")
    if model._blocks() is None:
        raise EstimatorError(
            "train_blocks needs an encoder with numbered blocks (encoder.layer.N); use train_blocks=None"
        )
    frozen = n_layers - train_blocks
    for name, p in list(model.named_parameters()):
        if name.startswith("head."):
            continue
        b = block_index(name)
        if b is not None and b >= frozen:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        del parent._parameters[leaf]
        parent.register_buffer(leaf, p.detach().requires_grad_(False))
    model.freeze_prefix(frozen)


def build_text_classifier(
    spec: Any, n_classes: int, *, seed: int = 0, input_shape: Sequence[int] | None = None
) -> TextClassifier:
    """θ₀ for fine-tuning: a private copy of the pretrained encoder of ``spec`` and a head drawn from ``seed``
    (PyTorch's default Linear init; the global RNG is left untouched)."""
    spec = parse_model_spec(spec)
    if not isinstance(spec, PretrainedSpec):
        raise EstimatorError(f"build_text_classifier needs an arch 'pretrained' spec, got {spec.arch!r}")
    if n_classes < 1:
        raise EstimatorError(f"n_classes must be ≥ 1, got {n_classes}")
    pm = get_pretrained(MINILM if spec.source == "minilm" else spec.path)
    if input_shape is not None:
        if len(input_shape) != 1:
            raise EstimatorError(
                f"a pretrained text model takes (N, L) token ids (estimators.text.tokenize_texts), got per-sample shape "
                f"{tuple(input_shape)}"
            )
        limit = int(getattr(pm.config, "max_position_embeddings", 512))
        if int(input_shape[0]) > limit:
            raise EstimatorError(
                f"{input_shape[0]} tokens per text exceed the model's {limit} positions; "
                "tokenize with a smaller max_length"
            )
    pad_id = pm.tokenizer.pad_token_id if pm.tokenizer.pad_token_id is not None else 0
    if spec.init == "random":
        from transformers import AutoModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2021)  # one random encoder shared by every seed, as the pretrained one is
            encoder = AutoModel.from_config(copy.deepcopy(pm.config)).eval()
    else:
        encoder = copy.deepcopy(pm.model)
        encoder.requires_grad_(True)  # the shared copy is frozen; this private one is θ₀
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # the head reads the pooled hidden states; BERT's [CLS] pooler would be dead weight
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = TextClassifier(encoder, n_classes, pad_id=pad_id, pooling=spec.pooling)
    set_trainable_blocks(model, spec.train_blocks)
    return model
