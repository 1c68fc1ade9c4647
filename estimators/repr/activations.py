"""Activations of a model at named layers, for ``repr_id`` (docs/methods.md §1.4).

* Spec models (mlp/lenet/cnn/resnet, ``nn.Sequential``): forward hooks on named modules; each sample's output
  is flattened (Konz: conv maps are flattened as they are, no pooling). :func:`spec_blocks` names the outputs
  of a profile: after each layer's activation (or pooling), each residual block, the global pool and the
  logits — the layer of Ansuini's profile, one point per "block".
* Pretrained text encoders (Hugging Face): the hidden states ``embeddings``, ``encoder.layer.0`` … — the
  output of the embedding layer and of every transformer block — each mean-pooled over the attention mask
  (``ids != pad_id``), as a sentence-transformers model pools its last one.

Both return float32 CPU matrices (N, F) per layer and never keep more than ``memory_budget_mb`` of them at
once: the layers are split into groups that fit, one forward pass per group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from estimators.base import EstimatorError

#: modules after which the previous layer's output is not a "block" output of its own
_FOLLOWERS = (
    nn.ReLU,
    nn.Tanh,
    nn.GELU,
    nn.Sigmoid,
    nn.ELU,
    nn.LeakyReLU,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
)


def spec_blocks(model: nn.Module) -> list[str]:
    """The top-level layers of a Sequential spec model whose output is one point of the profile: a child is
    skipped when the next child is an activation, a normalisation, a pooling or Dropout (its output is reported
    after that), and Flatten is skipped (it only reshapes the previous output, or the input)."""
    children = list(model.named_children())
    names = []
    for i, (name, mod) in enumerate(children):
        if isinstance(mod, nn.Flatten):
            continue
        nxt = children[i + 1][1] if i + 1 < len(children) else None
        if nxt is not None and isinstance(nxt, _FOLLOWERS):
            continue
        names.append(name)
    return names


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """Every named submodule (hookable layer) → its class name."""
    return {n: type(m).__name__ for n, m in model.named_modules() if n}


def _groups(widths: dict[str, int], n: int, budget_bytes: int) -> list[list[str]]:
    groups: list[list[str]] = []
    cur: list[str] = []
    used = 0
    for name, w in widths.items():
        need = 4 * n * w
        if cur and used + need > budget_bytes:
            groups.append(cur)
            cur, used = [], 0
        cur.append(name)
        used += need
    if cur:
        groups.append(cur)
    return groups


@torch.no_grad()
def spec_activations(
    model: nn.Module,
    X: Tensor,
    layers: Sequence[str],
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    memory_budget_mb: int = 1024,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Tensor]:
    """{layer: (N, F) float32 CPU activations} of ``model`` on ``X`` via forward hooks."""
    device = device or torch.device("cpu")
    modules = dict(model.named_modules())
    model = model.to(device).eval()
    N = X.shape[0]
    widths: dict[str, int] = {}
    probe: dict[str, Tensor] = {}

    def hook_for(store: dict[str, Tensor], name: str):
        def hook(_mod, _inp, out):
            if not isinstance(out, Tensor):
                raise EstimatorError(f"layer {name!r} does not output a tensor; pick another layer")
            store[name] = out.detach().reshape(out.shape[0], -1).to(torch.float32).cpu()

        return hook

    handles = [modules[n].register_forward_hook(hook_for(probe, n)) for n in layers]
    try:
        model(X[:1].to(device))
    finally:
        for h in handles:
            h.remove()
    widths = {n: int(probe[n].shape[1]) for n in layers}
    out: dict[str, Tensor] = {}
    groups = _groups(widths, N, memory_budget_mb * 2**20)
    n_batches = math.ceil(N / batch_size)
    total = len(groups) * n_batches
    step = 0
    for group in groups:
        bufs = {n: torch.empty(N, widths[n], dtype=torch.float32) for n in group}
        store: dict[str, Tensor] = {}
        handles = [modules[n].register_forward_hook(hook_for(store, n)) for n in group]
        try:
            for b in range(n_batches):
                sl = slice(b * batch_size, min(N, (b + 1) * batch_size))
                model(X[sl].to(device))
                for n in group:
                    bufs[n][sl] = store[n]
                step += 1
                if progress is not None:
                    progress(step / total, f"activations: batch {b + 1}/{n_batches}")
        finally:
            for h in handles:
                h.remove()
        out.update(bufs)
    return {n: out[n] for n in layers}


def text_layer_names(n_layers: int) -> list[str]:
    return ["embeddings"] + [f"encoder.layer.{i}" for i in range(n_layers)]


@torch.no_grad()
def text_activations(
    encoder: nn.Module,
    ids: Tensor,
    layers: Sequence[str],
    *,
    pad_id: int = 0,
    batch_size: int = 64,
    device: torch.device | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Tensor]:
    """{layer: (N, H)} mean-pooled hidden states of a Hugging Face encoder on (N, L) token ids. Batches are
    formed longest first and cut to their own longest text (the attention mask makes the padding inert)."""
    device = device or torch.device("cpu")
    n_layers = int(encoder.config.num_hidden_layers)
    names = text_layer_names(n_layers)
    index = {n: i for i, n in enumerate(names)}
    N = ids.shape[0]
    mask_all = ids != pad_id
    lengths = mask_all.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    H = int(encoder.config.hidden_size)
    out = {n: torch.empty(N, H, dtype=torch.float32) for n in layers}
    n_batches = math.ceil(N / batch_size)
    if encoder.device != device:
        raise EstimatorError(f"the encoder is on {encoder.device}, the data on {device}")
    for b in range(n_batches):
        idx = order[b * batch_size : (b + 1) * batch_size]
        L = max(1, int(lengths[idx].max()))
        ib = ids[idx, :L].to(device)
        mb = mask_all[idx, :L].to(device).to(torch.long)
        hs = encoder(input_ids=ib, attention_mask=mb, output_hidden_states=True).hidden_states
        m = mb.unsqueeze(-1).to(hs[0].dtype)
        denom = m.sum(1).clamp_min(1e-9)
        for n in layers:
            out[n][idx] = ((hs[index[n]] * m).sum(1) / denom).to(torch.float32).cpu()
        if progress is not None:
            progress((b + 1) / n_batches, f"hidden states: batch {b + 1}/{n_batches}")
    return out
