"""Weights without pickles (issue 16): safetensors round trips, refusals with clear messages, a shared cache."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from estimators.base import EstimatorError
from estimators.models import build_model
from estimators.models.pretrained import (
    check_hf_directory,
    clear_cache,
    get_pretrained,
    load_spec_weights,
    save_spec_weights,
)


def _train_briefly(net, X, y, steps=30):
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return net.eval()


@pytest.mark.parametrize(
    "spec, shape",
    [
        pytest.param({"arch": "mlp", "hidden": [32, 16]}, (20,), id="mlp"),
        pytest.param({"arch": "lenet"}, (1, 28, 28), id="lenet"),
        pytest.param({"arch": "cnn", "channels": [4, 8], "hidden": [16]}, (3, 8, 8), id="cnn"),
        pytest.param({"arch": "resnet", "depth": 8, "width": 4, "groups": 2}, (3, 8, 8), id="resnet"),
    ],
)
def test_trained_spec_round_trip_gives_identical_logits(tmp_path, spec, shape):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, *shape, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    net = _train_briefly(build_model(spec, shape, 3, seed=5), X, y)
    path = tmp_path / "w.safetensors"
    save_spec_weights(net, path)
    back = load_spec_weights(spec, shape, 3, path)
    with torch.no_grad():
        assert torch.equal(net(X), back(X))
    fresh = build_model(spec, shape, 3, seed=0).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(X), back(X))  # the weights came from the file, not the builder


@pytest.mark.parametrize("name", ["w.bin", "w.pt", "w.pth", "w.ckpt"])
def test_pickles_refused_without_opening(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"not even read")
    with pytest.raises(EstimatorError, match="pickled weights are refused.*safetensors"):
        load_spec_weights({"arch": "mlp"}, (4,), 2, p)


def test_spec_shape_mismatch_is_named(tmp_path):
    net = build_model({"arch": "mlp", "hidden": [8]}, (4,), 2)
    save_spec_weights(net, tmp_path / "w.safetensors")
    with pytest.raises(
        EstimatorError, match=r"spec mlp .*shape mismatches: .*1\.weight is \[8, 4\], expected \[9, 4\]"
    ):
        load_spec_weights({"arch": "mlp", "hidden": [9]}, (4,), 2, tmp_path / "w.safetensors")
    with pytest.raises(EstimatorError, match="unexpected tensors"):
        load_spec_weights({"arch": "mlp", "hidden": []}, (4,), 2, tmp_path / "w.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(EstimatorError, match="not a readable safetensors file"):
        load_spec_weights({"arch": "mlp"}, (4,), 2, tmp_path / "junk.safetensors")


def test_hf_directory_loads_offline_and_is_cached(tiny_bert_dir):
    d = tiny_bert_dir
    clear_cache()
    a = get_pretrained(d)
    b = get_pretrained(d)
    assert a is b and a.model is b.model  # loaded once, shared
    assert a.hidden_size == 16 and a.n_layers == 2
    ids = a.tokenizer(["w1 w2 w3"], return_tensors="pt")["input_ids"]
    assert ids.tolist() == [[2, 6, 7, 8, 3]]
    from transformers import BertModel

    ref = BertModel.from_pretrained(str(d), local_files_only=True).eval()
    with torch.no_grad():
        assert torch.equal(a.model(input_ids=ids).last_hidden_state, ref(input_ids=ids).last_hidden_state)


def test_hf_directory_refusals(tiny_bert_dir):
    d = tiny_bert_dir
    cfg = json.loads((d / "config.json").read_text())
    # a config whose hidden size disagrees with the weights
    (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 40}))
    with pytest.raises(
        EstimatorError, match=r"shape mismatches: .*intermediate\.dense\.weight is \[32, 16\], expected \[40, 16\]"
    ):
        check_hf_directory(d)
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "llama-custom"}))
    with pytest.raises(EstimatorError, match="unknown architecture.*model_type='llama-custom'.*bert"):
        check_hf_directory(d)
    (d / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(EstimatorError, match="remote code"):
        check_hf_directory(d)
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(EstimatorError, match=r"pickled weights are refused \(pytorch_model\.bin\)"):
        get_pretrained(d)
    (d / "pytorch_model.bin").unlink()
    (d / "model.safetensors").unlink()
    with pytest.raises(EstimatorError, match="no model.safetensors"):
        check_hf_directory(d)
