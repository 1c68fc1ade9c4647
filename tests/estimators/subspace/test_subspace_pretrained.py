"""Fine-tuning in a subspace of a pretrained model (issue 16; docs/methods.md §4.5) on a tiny random BertConfig."""

import pytest
import torch

pytest.importorskip("transformers")

from estimators.base import EstimatorError, no_progress
from estimators.models import build_model, count_params
from estimators.models.pretrained import get_pretrained
from estimators.subspace.projections import make_projection
from estimators.subspace.wrapper import (
    DirectModel,
    SubspaceModel,
    subspace_size,
    trainable_names,
)


def _spec(d, **kw):
    return {"arch": "pretrained", "source": "local", "path": str(d), **kw}


def _ids(n=6, L=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (n, L), generator=g)
    ids[:, 0] = 2
    lengths = torch.randint(3, L + 1, (n,), generator=g)
    for i, n_tok in enumerate(lengths.tolist()):
        ids[i, n_tok - 1] = 3
        ids[i, n_tok:] = 0  # [PAD]
    return ids


def _reference_logits(d, net, ids):
    """Independent reference: transformers' own BertModel from the directory, masked mean pool, the same head."""
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(d), local_files_only=True).eval()
    mask = (ids != 0).long()
    with torch.no_grad():
        h = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return pooled @ net.head.weight.T + net.head.bias


@pytest.mark.parametrize("said", [False, True], ids=["DID", "SAID"])
@pytest.mark.parametrize("train_blocks", [None, 1], ids=["all", "last1"])
def test_theta_d_zero_reproduces_pretrained_outputs(tiny_bert_dir, said, train_blocks):
    net = build_model(_spec(tiny_bert_dir, train_blocks=train_blocks), (9,), 3, seed=4)
    ids = _ids()
    D, _ = subspace_size(net)
    P = make_projection("fastfood", D, 10, seeds=[7])  # d = 10 (+ m scales for SAID)
    sub = SubspaceModel([net], P, said=said)
    sub.train()  # train mode must not switch dropout on
    with torch.no_grad():
        out = sub(ids.float()[None])[0]  # the estimator hands X over as float32
        assert torch.equal(out, net(ids))
    torch.testing.assert_close(out, _reference_logits(tiny_bert_dir, net, ids), rtol=0, atol=1e-5)


def test_trainable_subset_last_block_and_head(tiny_bert_dir):
    full = build_model(_spec(tiny_bert_dir), (9,), 3, seed=0)
    net = build_model(_spec(tiny_bert_dir, train_blocks=1), (9,), 3, seed=0)
    names = trainable_names(net)
    assert names == [n for n, _ in net.named_parameters()]
    assert names and all(n.startswith(("encoder.encoder.layer.1.", "head.")) for n in names)
    assert any(n.startswith("head.") for n in names)
    D, m = subspace_size(net)
    # D counts the last block and the head only, and so does count_params (what the subspace estimator uses)
    assert (
        D
        == count_params(net)
        == sum(p.numel() for n, p in full.named_parameters() if n.startswith(("encoder.encoder.layer.1.", "head.")))
    )
    assert D < count_params(full) and m == len(names)
    # the frozen weights are still there, as buffers with their pretrained values
    pre = get_pretrained(tiny_bert_dir).model
    frozen = dict(net.named_buffers())
    assert torch.equal(frozen["encoder.embeddings.word_embeddings.weight"], pre.embeddings.word_embeddings.weight)
    assert "encoder.encoder.layer.0.attention.self.query.weight" in frozen
    # a nonzero θ_d moves every trainable tensor and nothing else
    P = make_projection("dense", D, 12, seeds=[1])
    sub = SubspaceModel([net], P)
    with torch.no_grad():
        sub.theta_d.normal_()
    theta = sub.parameters_of_seed(0)
    assert set(theta) == set(names)
    assert all(not torch.equal(theta[n], dict(net.named_parameters())[n]) for n in names)
    assert torch.equal(
        dict(sub.net.named_buffers())["encoder.embeddings.word_embeddings.weight"],
        pre.embeddings.word_embeddings.weight,
    )
    with pytest.raises(EstimatorError, match="train_blocks=3 exceeds the model's 2"):
        build_model(_spec(tiny_bert_dir, train_blocks=3), (9,), 3)


def test_several_seeds_share_the_encoder_and_get_gradients(tiny_bert_dir):
    nets = [build_model(_spec(tiny_bert_dir, train_blocks=1), (9,), 3, seed=s) for s in (0, 1)]
    assert not torch.equal(nets[0].head.weight, nets[1].head.weight)  # the head is drawn per seed
    D, _ = subspace_size(nets[0])
    sub = SubspaceModel(nets, make_projection("fastfood", D, 10, seeds=[3, 4]))
    ids = torch.stack([_ids(seed=0), _ids(seed=1)])
    with torch.no_grad():
        out = sub(ids)
    # S rows run batched (one matmul per weight over packed tokens): the same function up to float rounding
    torch.testing.assert_close(out[1], nets[1](ids[1]), rtol=0, atol=1e-5)
    sub.theta_d.data.normal_()
    sub(ids).sum().backward()
    assert sub.theta_d.grad is not None and bool((sub.theta_d.grad.abs().sum(1) > 0).all())
    direct = DirectModel(nets)
    assert direct.theta.shape == (2, D)


def test_registered_subspace_runs_on_token_ids(tiny_bert_dir):
    """End to end through the registered estimator (all weights trainable; a learnable toy task on token ids)."""
    from estimators import registry

    g = torch.Generator().manual_seed(0)
    n = 120
    y = torch.randint(0, 2, (n,), generator=g)
    ids = torch.randint(5, 50, (n, 6), generator=g)
    ids[:, 1] = torch.where(y == 1, 5, 6)  # the label is written in the second token
    ids[:, 0], ids[:, -1] = 2, 3
    est = registry.get("subspace")
    p = est.parse_params(
        {
            "model": {**_spec(tiny_bert_dir), "train": {"epochs": 3, "lr": 0.01, "batch_size": 32}},
            "seeds": 2,
            "d_min": 8,
            "grid_factor": 4,
            "max_d": 512,
            "bisect_steps": 0,
            "n_bootstrap": 50,
        }
    )
    r = est.fn(ids.float(), y, p, device=torch.device("cpu"), progress=no_progress)
    assert r.details["D"] == count_params(build_model(_spec(tiny_bert_dir), (6,), 2))
    assert r.details["baseline"]["direct_mean"] > 0.8  # chance is about 0.5
    assert r.value is not None and 8 <= r.value <= 512


def test_frozen_prefix_cache_is_the_same_function(tiny_bert_dir):
    """With the lower blocks frozen the classifier caches their output per text; it must equal the full forward."""
    net = build_model(_spec(tiny_bert_dir, train_blocks=1), (9,), 3, seed=2)
    assert net.frozen_blocks == 1
    ids = _ids(n=8)
    with torch.no_grad():
        cached = net(ids)
        assert len(net._prefix_store) == len({tuple(r[r != 0].tolist()) for r in ids})
        again = net(ids[[3, 1]])  # cache hits, other batch
        net.freeze_prefix(0)
        full = net(ids)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(again, full[[3, 1]], rtol=0, atol=1e-5)
    assert build_model(_spec(tiny_bert_dir), (9,), 3).frozen_blocks == 0  # all weights trained: no cache


def test_random_init_control(tiny_bert_dir):
    pre = build_model(_spec(tiny_bert_dir, train_blocks=1), (9,), 3, seed=0)
    rnd = [build_model(_spec(tiny_bert_dir, train_blocks=1, init="random"), (9,), 3, seed=s) for s in (0, 1)]
    w = "encoder.embeddings.word_embeddings.weight"
    assert not torch.equal(dict(pre.named_buffers())[w], dict(rnd[0].named_buffers())[w])
    assert torch.equal(dict(rnd[0].named_buffers())[w], dict(rnd[1].named_buffers())[w])  # shared encoder
    assert torch.equal(pre.head.weight, rnd[0].head.weight)  # the head depends on the seed only


def test_registered_subspace_last_block_only(tiny_bert_dir):
    """train_blocks=1 through the registered estimator: D is the last block + head."""
    from estimators import registry

    g = torch.Generator().manual_seed(1)
    n = 100
    y = torch.randint(0, 2, (n,), generator=g)
    ids = torch.randint(7, 50, (n, 6), generator=g)
    ids[:, 2] = torch.where(y == 1, 5, 6)
    ids[:, 0], ids[:, -1] = 2, 3
    est = registry.get("subspace")
    spec = {**_spec(tiny_bert_dir, train_blocks=1), "train": {"epochs": 2, "lr": 0.01, "batch_size": 25}}
    p = est.parse_params(
        {
            "model": spec,
            "seeds": 2,
            "d_min": 16,
            "grid_factor": 4,
            "max_d": 256,
            "bisect_steps": 0,
            "n_bootstrap": 20,
            "said": True,
        }
    )
    r = est.fn(ids.float(), y, p, device=torch.device("cpu"), progress=no_progress)
    net = build_model(spec, (6,), 2)
    assert r.details["D"] == count_params(net) == subspace_size(net)[0] < 6147
    assert r.details["n_tensors"] == subspace_size(net)[1]


@pytest.mark.parametrize("said", [False, True], ids=["DID", "SAID"])
def test_batched_packed_rows_equal_per_seed_full_length(tiny_bert_dir, said, monkeypatch):
    """The batched path (every seed in one call, packed real tokens, batch-longest padding, cached prefix) gives the
    logits and θ_d gradients of one call per seed through transformers' own BertLayer at the full max length."""
    from estimators.models.text_classifier import TextClassifier

    L = 12
    nets = [build_model(_spec(tiny_bert_dir, train_blocks=1), (L,), 3, seed=s) for s in (0, 1, 2)]
    D, _ = subspace_size(nets[0])
    P = make_projection("fastfood", D, 24, seeds=[5, 6, 7])
    sub = SubspaceModel(nets, P, said=said)
    with torch.no_grad():
        sub.theta_d.normal_(0, 0.5)  # away from θ₀, a different point per seed
        if said:
            sub.lam.uniform_(0.5, 1.5)
    ids = torch.stack([_ids(n=7, L=L, seed=s) for s in (3, 4, 5)])  # (S, B, L): a batch per seed
    ids[0, 0, 1:] = 9  # one text fills all L positions
    ids[0, 0, -1] = 3
    assert sub.net.rows_ready()
    fast = sub(ids.float())
    fast.square().sum().backward()
    g_fast = sub.theta_d.grad.clone()
    fast_shared = sub(ids[1], shared_input=True).detach()

    # reference 1: transformers' BertModel (every block, full length, attention mask) with each seed's θ
    from transformers import BertModel

    for s in range(3):
        bert = BertModel.from_pretrained(str(tiny_bert_dir), local_files_only=True).eval()
        theta = sub.parameters_of_seed(s)
        bert.load_state_dict(
            {k.removeprefix("encoder."): v for k, v in theta.items() if k.startswith("encoder.")}, strict=False
        )
        for x, got in ((ids[s], fast[s]), (ids[1], fast_shared[s])):
            mask = (x != 0).long()
            with torch.no_grad():
                h = bert(input_ids=x, attention_mask=mask).last_hidden_state
                pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                ref = pooled @ theta["head.weight"].T + theta["head.bias"]
            torch.testing.assert_close(got.detach(), ref, rtol=0, atol=1e-5)

    # reference 2: the per-seed path (one functional_call per seed through the module's own BertLayer)
    monkeypatch.setattr(TextClassifier, "rows_ready", lambda self: False)
    sub.theta_d.grad = None
    slow = sub(ids.float())
    slow.square().sum().backward()
    torch.testing.assert_close(fast.detach(), slow.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(g_fast, sub.theta_d.grad, rtol=1e-4, atol=1e-5)


def test_prefix_store_is_shared_by_copies_with_the_same_frozen_weights(tiny_bert_dir):
    a = build_model(_spec(tiny_bert_dir, train_blocks=1), (9,), 3, seed=0)
    b = build_model(_spec(tiny_bert_dir, train_blocks=1), (9,), 3, seed=1)
    r = build_model(_spec(tiny_bert_dir, train_blocks=1, init="random"), (9,), 3, seed=0)
    assert (
        a._prefix_store
        is b._prefix_store
        is SubspaceModel([a, b], make_projection("fastfood", subspace_size(a)[0], 4, seeds=[1, 2])).net._prefix_store
    )
    assert r._prefix_store is not a._prefix_store  # other frozen weights, other states
    ids = _ids(n=5)
    with torch.no_grad():
        a(ids)
        n = len(a._prefix_store)
        b(ids)  # every text already cached by a
    assert len(b._prefix_store) == n > 0


def test_full_prefix_store_still_gives_the_same_outputs(tiny_bert_dir, monkeypatch):
    """Past the store's memory limit new texts are computed on every call (not cached); the outputs do not change."""
    from estimators.models.text_classifier import _PrefixStore

    ids = _ids(n=8)
    ref = build_model(_spec(tiny_bert_dir, train_blocks=1), (9,), 3, seed=2)
    with torch.no_grad():
        want = ref(ids)
    monkeypatch.setattr(_PrefixStore, "LIMIT", 4 * 9 * 16 * 4)  # bytes of 4 texts of 9 tokens (hidden 16, float32)
    net = build_model(_spec(tiny_bert_dir, train_blocks=1, init="random"), (9,), 3, seed=2)
    net.load_state_dict(ref.state_dict())  # the same weights, a fresh store (other key)
    net._prefix_store = _PrefixStore()
    with torch.no_grad():
        first = net(ids[:3])  # stored
        n = len(net._prefix_store)
        rest = net(ids)  # 3 hits from the bank + 5 texts computed but not stored
    assert 0 < n == len(net._prefix_store) <= 3
    torch.testing.assert_close(first, want[:3], rtol=0, atol=1e-5)
    torch.testing.assert_close(rest, want, rtol=0, atol=1e-5)
