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

Speed (``train_blocks`` = L with BERT blocks, e.g. the packaged MiniLM): the frozen embeddings and lower blocks run
once per distinct text per process (:class:`_PrefixStore`, shared by every seed, trial and lr range-test copy with
the same frozen weights); :meth:`TextClassifier.forward_rows` then runs the trained blocks and the head for S
parameter rows (seeds, lr candidates) in one call — one batched matmul per weight, on the real tokens only (each
row's tokens packed, padding skipped), attention padded to the batch's longest text. The subspace wrappers use it
for S > 1 and ``forward`` uses it for one row, so every path computes the same function (tests compare it with
transformers' own BertModel to 1e-5).

    >>> net = build_text_classifier({"arch": "pretrained", "train_blocks": 1}, 3, seed=0)   # doctest: +SKIP
    >>> [n for n, _ in net.named_parameters()][:2]                                       # doctest: +SKIP
    ['encoder.encoder.layer.5.attention.self.query.weight', 'encoder.encoder.layer.5.attention.self.query.bias']
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
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


class _PrefixStore:
    """Hidden states after the frozen blocks, one row per distinct text (its token ids up to its length), in one
    device tensor ``bank`` (rows, width, H) so that a batch is one lookup and one gather. Shared by every copy of a
    classifier with the same frozen weights (``copy.deepcopy`` returns the store itself), so seeds, trials and lr
    range-test candidates compute each text's frozen part once per process."""

    LIMIT = 2**31  # at most 2 GiB of cached states per store

    def __init__(self) -> None:
        self.index: dict[bytes, int] = {}
        self.bank: Tensor | None = None
        self.n = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> _PrefixStore:
        return self

    def __len__(self) -> int:
        return len(self.index)

    def use(self, device: torch.device, dtype: torch.dtype) -> None:
        """Start over when asked for another device or dtype than the bank's (the index points into one bank)."""
        if self.bank is not None and (self.bank.device != device or self.bank.dtype != dtype):
            self.index, self.bank, self.n = {}, None, 0

    def add(self, keys: list[bytes], h: Tensor) -> bool:
        """Store the rows of ``h`` (k, L, H) under ``keys``; False (nothing stored) once the store is full."""
        k, L, H = h.shape
        bank = self.bank
        if bank is None:
            bank = h.new_zeros(max(64, k), L, H)
        if L > bank.shape[1]:
            bank = torch.nn.functional.pad(bank, (0, 0, 0, L - bank.shape[1]))
        if (self.n + k) * bank.shape[1] * H * bank.element_size() > self.LIMIT:
            self.bank = bank
            return False
        if self.n + k > bank.shape[0]:
            cap = self.LIMIT // (bank.shape[1] * H * bank.element_size())  # rows that fit in LIMIT (≥ n + k)
            grown = bank.new_zeros(min(max(2 * bank.shape[0], self.n + k), cap), bank.shape[1], H)
            grown[: self.n] = bank[: self.n]
            bank = grown
        bank[self.n : self.n + k, :L] = h
        for j, key in enumerate(keys):
            self.index[key] = self.n + j
        self.n += k
        self.bank = bank
        return True


#: process-wide stores, keyed by the frozen weights' identity (weights hash, init, frozen blocks); the last few kept
_STORES: dict[tuple[Any, ...], _PrefixStore] = {}
_MAX_STORES = 1  # one model's states (≤ 2 GiB) per process: a worker serves one analysis at a time


def _shared_store(key: tuple[Any, ...] | None) -> _PrefixStore:
    if key is None:
        return _PrefixStore()
    store = _STORES.pop(key, None)
    if store is None:  # (an empty store is falsy: no `or`)
        store = _PrefixStore()
    _STORES[key] = store  # most recent last
    while len(_STORES) > _MAX_STORES:
        _STORES.pop(next(iter(_STORES)))
    return store


def clear_prefix_stores() -> None:
    """Forget every cached frozen-prefix state (tests; a worker that needs the memory back)."""
    _STORES.clear()


#: the trained tensors of one BERT block, by their name inside the block
_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
_FFN = ("intermediate.dense", "output.dense")
_NORMS = ("attention.output.LayerNorm", "output.LayerNorm")


def _plain_bert_layer(layer: nn.Module) -> bool:
    """A transformers BertLayer without cross attention or a decoder mask: what :meth:`TextClassifier.forward_rows`
    reimplements (other block types take the module's own forward, one seed at a time)."""
    att = getattr(getattr(layer, "attention", None), "self", None)
    return (
        type(layer).__name__ == "BertLayer"
        and not getattr(layer, "is_decoder", True)
        and not getattr(layer, "add_cross_attention", False)
        and att is not None
        and all(hasattr(att, n) for n in ("query", "key", "value", "num_attention_heads", "attention_head_size"))
        and hasattr(getattr(layer, "intermediate", None), "intermediate_act_fn")
    )


class TextClassifier(nn.Module):
    """encoder(ids) → pooled last hidden state → Linear head. ``forward(x)`` takes (B, L) token ids."""

    #: transformers' attention-mask helpers branch on tensor values, which torch.func.vmap cannot trace; the
    #: subspace wrappers call :meth:`forward_rows` instead when :meth:`rows_ready` (every seed in one call)
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
        #: identity of the frozen weights (set by build_text_classifier): copies with the same key share states
        self.prefix_key: tuple[Any, ...] | None = None
        self._prefix_store = _PrefixStore()

    def train(self, mode: bool = True) -> TextClassifier:
        super().train(mode)
        self.encoder.eval()  # no dropout: θ alone determines the outputs
        return self

    def freeze_prefix(self, n_blocks: int) -> None:
        """Declare the embeddings and the first ``n_blocks`` blocks frozen (their parameters must have
        ``requires_grad`` off and must never change): their output per text is then cached and only the blocks
        above run on every call — the same function, at the cost of the trained blocks alone."""
        self.frozen_blocks = int(n_blocks)
        key = None if self.prefix_key is None or not n_blocks else (*self.prefix_key, self.frozen_blocks)
        self._prefix_store = _shared_store(key)

    def _blocks(self) -> nn.ModuleList | None:
        inner = getattr(self.encoder, "encoder", None)
        layers = getattr(inner, "layer", None)
        return layers if isinstance(layers, nn.ModuleList) else None

    def rows_ready(self) -> bool:
        """Whether :meth:`forward_rows` applies: a frozen prefix and plain BERT blocks above it."""
        blocks = self._blocks()
        return (
            bool(self.frozen_blocks)
            and blocks is not None
            and all(_plain_bert_layer(b) for b in blocks[self.frozen_blocks :])
        )

    def _mask4d(self, h: Tensor, mask: Tensor) -> Tensor | None:
        try:
            from transformers.masking_utils import create_bidirectional_mask
        except ImportError:  # transformers 4.x: the classic additive mask
            return (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        return create_bidirectional_mask(config=self.encoder.config, inputs_embeds=h, attention_mask=mask)

    @torch.no_grad()
    def _prefix(self, ids: Tensor, L: int, host: np.ndarray | None = None) -> Tensor:
        """Hidden states after the frozen blocks, (B, L, H), for ids (B, ≥L) whose texts fit in L tokens: the texts
        not cached yet go through the frozen part in one padded batch (the mask makes the padding inert, so a text's
        states do not depend on its batch beyond float rounding) and are cached on their own length; then one
        gather. Positions past a text's length are zeros. ``host``: ``ids`` already on the host (numpy)."""
        store = self._prefix_store
        store.use(ids.device, self.head.weight.dtype)
        if host is None:
            host = ids.cpu().numpy()  # the one host sync of a call
        host = host[:, :L]
        lengths = (host != self.pad_id).sum(1)
        keys = [host[i, : int(lengths[i])].tobytes() for i in range(host.shape[0])]
        todo: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in store.index and key not in todo:
                todo[key] = i
        fresh: Tensor | None = None
        if todo:
            rows = ids[list(todo.values()), :L].to(torch.long)
            m = (rows != self.pad_id).to(torch.long)
            h = self.encoder.embeddings(input_ids=rows)
            mask4 = self._mask4d(h, m)
            for layer in self._blocks()[: self.frozen_blocks]:
                h = layer(h, mask4)
                h = h[0] if isinstance(h, tuple) else h
            h = h.to(self.head.weight.dtype) * m[..., None].to(h.dtype)  # zeros past each text's length
            if store.add(list(todo), h):
                fresh = None
            else:
                fresh = h
        if fresh is None:
            bank = store.bank
            assert bank is not None
            idx = torch.as_tensor([store.index[k] for k in keys], device=bank.device)
            got = bank.index_select(0, idx)
            got = got[:, :L] if got.shape[1] >= L else torch.nn.functional.pad(got, (0, 0, 0, L - got.shape[1]))
            return got.to(ids.device)
        # the store is full: stored rows from the bank, the rest from this call
        H = int(self.encoder.config.hidden_size)
        out = torch.zeros(ids.shape[0], L, H, dtype=self.head.weight.dtype, device=ids.device)
        slot = {k: j for j, k in enumerate(todo)}
        for i, key in enumerate(keys):
            if key in slot:
                out[i] = fresh[slot[key]]
            else:
                row = store.bank[store.index[key], :L]
                out[i, : row.shape[0]] = row.to(ids.device)
        return out

    def _tensor(self, rows: Mapping[str, Tensor], name: str, S: int) -> Tensor:
        """Parameter ``name`` for S rows: the rows' own (S, …) values, or the module's shared one."""
        t = rows.get(name)
        if t is not None:
            return t
        own = self._own(name)
        return own[None].expand(S, *own.shape)

    def _own(self, target: str) -> Tensor:
        # attribute access, so that torch.func.functional_call's swapped tensors (and buffers) are what is read
        mod, _, leaf = target.rpartition(".")
        return getattr(self.get_submodule(mod) if mod else self, leaf)

    def forward_rows(self, rows: Mapping[str, Tensor], x: Tensor, *, shared_input: bool = False) -> Tensor:
        """S classifiers at once, (S, B, classes): ``rows`` maps trained parameter names to (S, *shape) values
        (missing names: the module's own), ``x`` is (S, B, L) token ids, or (B, L) for every row with
        ``shared_input``. Only the trained blocks run (the frozen prefix comes from the store), on the real tokens
        only (packed per row; padding is skipped, not masked), with one batched matmul per weight for all rows.
        The same function as S calls of :meth:`forward` up to float rounding (tests/estimators/subspace)."""
        S = next(iter(rows.values())).shape[0] if rows else 1
        ids = x if not x.is_floating_point() else torch.round(x)
        ids = ids.to(torch.long)
        flat = ids.reshape(-1, ids.shape[-1])
        host = flat.cpu().numpy()  # sizes and cache keys from one host copy: one sync per call
        n_tok = (host != self.pad_id).sum(1)
        L = max(1, int(n_tok.max()))
        mask = flat[:, :L] != self.pad_id
        h = self._prefix(flat, L, host)  # (S·B or B, L, H)
        if shared_input:
            h, mask = h.expand(S, -1, -1, -1), mask.expand(S, -1, -1)
            T = int(n_tok.sum())
        else:
            h, mask = h.reshape(S, -1, L, h.shape[-1]), mask.reshape(S, -1, L)
            T = int(n_tok.reshape(S, -1).sum(1).max())
        B, H = h.shape[1], h.shape[-1]
        # pack: every row's real tokens first, in order; T = the most any row has (shorter rows carry a few
        # padding positions along, which the key mask and the pooling ignore)
        m = mask.reshape(S, B * L)
        idx = torch.argsort((~m).to(torch.uint8), dim=1, stable=True)[:, :T]
        idx_h = idx[..., None].expand(S, T, H)
        hp = h.reshape(S, B * L, H).gather(1, idx_h)
        key_mask = (1.0 - mask.reshape(S * B, 1, 1, L).to(hp.dtype)) * torch.finfo(hp.dtype).min
        blocks = self._blocks()
        assert blocks is not None
        for i in range(self.frozen_blocks, len(blocks)):
            hp = self._bert_block_rows(blocks[i], f"encoder.encoder.layer.{i}.", rows, hp, idx_h, key_mask, S, B, L)
        h = hp.new_zeros(S, B * L, H).scatter(1, idx_h, hp).reshape(S * B, L, H)
        pooled = pool(h, mask.reshape(S * B, L), self.pooling).reshape(S, B, H)
        w, b = self._tensor(rows, "head.weight", S), self._tensor(rows, "head.bias", S)
        return torch.baddbmm(b[:, None, :], pooled, w.transpose(1, 2))

    def _bert_block_rows(
        self,
        layer: nn.Module,
        prefix: str,
        rows: Mapping[str, Tensor],
        hp: Tensor,
        idx_h: Tensor,
        key_mask: Tensor,
        S: int,
        B: int,
        L: int,
    ) -> Tensor:
        """transformers' BertLayer (eval: no dropout) on packed tokens (S, T, H) with per-row weights."""
        H = hp.shape[-1]

        def lin(t: Tensor, name: str) -> Tensor:
            w, b = self._tensor(rows, prefix + name + ".weight", S), self._tensor(rows, prefix + name + ".bias", S)
            return torch.baddbmm(b[:, None, :], t, w.transpose(1, 2))

        def norm(t: Tensor, name: str) -> Tensor:
            ln = layer.get_submodule(name)
            w, b = self._tensor(rows, prefix + name + ".weight", S), self._tensor(rows, prefix + name + ".bias", S)
            return torch.nn.functional.layer_norm(t, (H,), eps=ln.eps) * w[:, None, :] + b[:, None, :]

        att = layer.attention.self
        nh, dh = int(att.num_attention_heads), int(att.attention_head_size)

        def heads(t: Tensor) -> Tensor:  # packed (S, T, nh·dh) → padded (S·B, nh, L, dh)
            full = t.new_zeros(S, B * L, t.shape[-1]).scatter(1, idx_h[..., : t.shape[-1]], t)
            return full.reshape(S * B, L, nh, dh).transpose(1, 2)

        q, k, v = (heads(lin(hp, n)) for n in _LINEARS[:3])
        ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=dh**-0.5)
        ctx = ctx.transpose(1, 2).reshape(S, B * L, nh * dh).gather(1, idx_h[..., : nh * dh])
        a = norm(lin(ctx, _LINEARS[3]) + hp, _NORMS[0])
        f = layer.intermediate.intermediate_act_fn(lin(a, _FFN[0]))
        return norm(lin(f, _FFN[1]) + a, _NORMS[1])

    def features(self, x: Tensor) -> Tensor:
        ids = x if not x.is_floating_point() else torch.round(x)
        ids = ids.to(torch.long)
        mask = (ids != self.pad_id).to(torch.long)
        blocks = self._blocks()
        if self.frozen_blocks and blocks is not None:
            L = max(1, int(mask.sum(1).max()))
            mask = mask[:, :L]
            h = self._prefix(ids, L)
            mask4 = self._mask4d(h, mask)
            for layer in blocks[self.frozen_blocks :]:
                h = layer(h, mask4)
                h = h[0] if isinstance(h, tuple) else h
            return pool(h, mask, self.pooling)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return pool(hidden, mask, self.pooling)

    def forward(self, x: Tensor) -> Tensor:
        if self.rows_ready():
            return self.forward_rows({}, x, shared_input=True)[0]
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
    model.prefix_key = (str(pm.path), pm.weights_sha256, spec.init)  # the frozen weights, hence their states
    set_trainable_blocks(model, spec.train_blocks)
    return model
