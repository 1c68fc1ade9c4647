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


def _safetensors_with_header_length(path, n: int):
    """A valid safetensors file of one float32 tensor whose JSON header is padded (with spaces, as the format allows)
    to exactly ``n`` bytes."""
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (n - len(header))
    path.write_bytes(struct.pack("<Q", n) + header + struct.pack("<2f", 1.0, 2.0))
    return path


def test_pickles_are_recognised_by_their_first_bytes(tmp_path):
    import io
    import pickle

    from estimators.models.pretrained import pickle_kind, refuse_pickles, safetensors_shapes

    for protocol in (2, 3, 4, 5):
        (tmp_path / "p").write_bytes(pickle.dumps({"w": [1.0]}, protocol=protocol))
        assert pickle_kind(tmp_path / "p") == "a Python pickle", protocol
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    (tmp_path / "t").write_bytes(buf.getvalue())
    assert pickle_kind(tmp_path / "t") == "a torch.save archive (a zip holding a pickle)"
    # a safetensors header of 1408 bytes starts 0x80 0x05, as a protocol-5 pickle does: still safetensors
    st = _safetensors_with_header_length(tmp_path / "w.safetensors", 0x0580)
    assert st.read_bytes()[:2] == b"\x80\x05"
    assert pickle_kind(st) is None and safetensors_shapes(st) == {"w": (2,)}
    refuse_pickles(st)  # no error
    # named like safetensors, content a pickle: refused all the same, and a directory holding one is refused whole
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model.safetensors").write_bytes(buf.getvalue())
    with pytest.raises(EstimatorError, match=r"pickled weights are refused \(model\.safetensors \(a torch\.save"):
        refuse_pickles(tmp_path / "d")


@pytest.mark.parametrize(
    "spec, shape",
    [
        pytest.param({"arch": "mlp", "hidden": [32, 16]}, (20,), id="mlp"),
        pytest.param({"arch": "lenet"}, (1, 28, 28), id="lenet"),
        pytest.param({"arch": "cnn", "channels": [4, 8], "hidden": [16]}, (3, 8, 8), id="cnn"),
        pytest.param({"arch": "resnet", "depth": 8, "width": 4, "groups": 2}, (3, 8, 8), id="resnet"),
    ],
)
def test_state_shapes_on_the_meta_device_and_the_class_count_from_the_weights(tmp_path, spec, shape):
    from estimators.models.pretrained import check_spec_weights, infer_n_classes, spec_state_shapes

    net = build_model(spec, shape, 7, seed=1)
    assert spec_state_shapes(spec, shape, 7) == {k: tuple(v.shape) for k, v in net.state_dict().items()}
    save_spec_weights(net, tmp_path / "w.safetensors")
    from estimators.models.pretrained import safetensors_shapes

    assert infer_n_classes(spec, shape, safetensors_shapes(tmp_path / "w.safetensors")) == 7
    assert check_spec_weights(spec, shape, None, tmp_path / "w.safetensors") == 7
    with pytest.raises(EstimatorError, match="shape mismatches"):
        check_spec_weights(spec, shape, 6, tmp_path / "w.safetensors")


def test_spec_models_are_loaded_once_per_process_and_frozen(tmp_path):
    from estimators.models.pretrained import get_spec_model

    spec = {"arch": "mlp", "hidden": [8]}
    net = build_model(spec, (4,), 3, seed=2).eval()
    save_spec_weights(net, tmp_path / "w.safetensors")
    clear_cache()
    a = get_spec_model(spec, (4,), None, tmp_path / "w.safetensors")
    assert get_spec_model(spec, (4,), None, tmp_path / "w.safetensors") is a
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    X = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(a(X), net(X))
    # other weights (another file's content) are another model
    save_spec_weights(build_model(spec, (4,), 3, seed=3), tmp_path / "v.safetensors")
    assert get_spec_model(spec, (4,), None, tmp_path / "v.safetensors") is not a
    clear_cache()
    assert get_spec_model(spec, (4,), None, tmp_path / "w.safetensors") is not a
