"""taskgauge.weights without the API: the form, the model zip (extraction under the limits, a normalised zip that
gives the same bytes for the same files) and the worker's local copy of stored weights."""

from __future__ import annotations

import os
import time
import zipfile

import pytest

from taskgauge import weights
from taskgauge.blobs import FileBlobStore
from taskgauge.datasets.ingest.errors import IngestError
from taskgauge.weights import HF_ZIP, SAFETENSORS, WeightsForm, extract_model_zip, local_weights, write_model_zip


def _ctx(max_files=256, max_expanded_mb=64):
    return weights._ctx("m.zip", WeightsForm(max_files=max_files, max_expanded_mb=max_expanded_mb))


@pytest.mark.parametrize(
    "given, shape",
    [("784", (784,)), ("1,28,28", (1, 28, 28)), ("1x28x28", (1, 28, 28)), ("[3, 32, 32]", (3, 32, 32)), ("", None)],
)
def test_input_shape_forms(given, shape):
    assert WeightsForm(input_shape=given).input_shape == shape


@pytest.mark.parametrize("bad", ["ten", "1,2,3,4", "0,28", "-1"])
def test_bad_input_shapes_say_how(bad):
    with pytest.raises(ValueError, match="input_shape"):
        WeightsForm(input_shape=bad)


@pytest.mark.parametrize(
    "filename, fmt", [("w.safetensors", SAFETENSORS), ("W.SAFETENSORS", SAFETENSORS), ("bert.zip", HF_ZIP)]
)
def test_formats_by_name(filename, fmt):
    assert weights.weights_format(filename) == fmt


@pytest.mark.parametrize("filename", ["w.pt", "w.pth", "pytorch_model.bin", "last.ckpt", "w.pkl"])
def test_pickle_names_are_refused_before_reading(filename):
    with pytest.raises(IngestError, match="pickles") as exc:
        weights.weights_format(filename)
    assert exc.value.status == 422 and exc.value.title == "Pickled weights refused"


def test_precheck_needs_spec_and_shape_for_safetensors_and_refuses_service_keys_for_a_zip():
    spec = {"arch": "mlp", "hidden": [4]}
    assert weights.precheck("w.safetensors", WeightsForm(spec=spec, input_shape="3")) == SAFETENSORS
    with pytest.raises(IngestError, match="No model spec|spec of their network"):
        weights.precheck("w.safetensors", WeightsForm(input_shape="3"))
    with pytest.raises(IngestError, match="input_shape"):
        weights.precheck("w.safetensors", WeightsForm(spec=spec))
    with pytest.raises(IngestError, match="Hugging Face-style"):
        weights.precheck("w.safetensors", WeightsForm(spec={"arch": "pretrained"}, input_shape="3"))
    assert weights.precheck("m.zip", WeightsForm(spec={"train_blocks": 1, "max_length": 64})) == HF_ZIP
    with pytest.raises(IngestError, match="set by the service"):
        weights.precheck("m.zip", WeightsForm(spec={"path": "/etc"}))
    with pytest.raises(IngestError, match="arch 'pretrained'"):
        weights.precheck("m.zip", WeightsForm(spec={"arch": "mlp"}))
    with pytest.raises(IngestError, match="input_shape and n_classes"):
        weights.precheck("m.zip", WeightsForm(input_shape="3"))


def _model_dir(root):
    d = root / "model"
    (d / "1_Pooling").mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "bert"}')
    (d / "model.safetensors").write_bytes(os.urandom(1000))
    (d / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return d


def test_model_zip_round_trip_is_normalised(tmp_path):
    d = _model_dir(tmp_path)
    user = tmp_path / "user.zip"
    with zipfile.ZipFile(user, "w", zipfile.ZIP_DEFLATED) as zf:  # one folder at the top, macOS litter
        for p in sorted(d.rglob("*")):
            if p.is_file():
                zf.write(p, "my-model/" + p.relative_to(d).as_posix())
        zf.writestr("__MACOSX/my-model/._config.json", b"x")
        zf.writestr("my-model/.DS_Store", b"x")
    out = tmp_path / "x"
    out.mkdir()
    assert extract_model_zip(_ctx(), user, out) == ["1_Pooling/config.json", "config.json", "model.safetensors"]
    for rel in ("config.json", "model.safetensors", "1_Pooling/config.json"):
        assert (out / rel).read_bytes() == (d / rel).read_bytes()
    a, b = tmp_path / "a.zip", tmp_path / "b.zip"
    write_model_zip(out, a)
    time.sleep(1.1)
    os.utime(out / "config.json")  # other timestamps, same files: the same bytes
    write_model_zip(out, b)
    assert a.read_bytes() == b.read_bytes()


def test_model_zip_limits_are_422(tmp_path):
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.safetensors", b"\0" * (2 * 1024 * 1024))
    (tmp_path / "o1").mkdir()
    with pytest.raises(IngestError) as exc:
        extract_model_zip(_ctx(max_expanded_mb=1), big, tmp_path / "o1")
    assert exc.value.status == 422 and exc.value.title == "Model zip over the limits" and "1 MB" in exc.value.detail
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(5):
            zf.writestr(f"f{i}", b"x")
    (tmp_path / "o2").mkdir()
    with pytest.raises(IngestError, match="5 files, more than the limit of 4") as exc:
        extract_model_zip(_ctx(max_files=4), many, tmp_path / "o2")
    assert exc.value.status == 422
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("config.json")
        info.external_attr = 0o120777 << 16  # a symbolic link
        zf.writestr(info, "/etc/passwd")
    (tmp_path / "o3").mkdir()
    with pytest.raises(IngestError, match="symbolic link"):
        extract_model_zip(_ctx(), link, tmp_path / "o3")
    assert not any((tmp_path / "o3").iterdir())


def test_local_weights_are_made_once_per_host_and_remembered(tmp_path):
    store = FileBlobStore(tmp_path / "blobs").ensure()
    d = _model_dir(tmp_path)
    zipped = tmp_path / "m.zip"
    write_model_zip(d, zipped)
    staged = store.stage(zipped.read_bytes())
    store.publish(staged)
    root = tmp_path / "models"
    path = local_weights(store, root, staged.sha256, HF_ZIP)
    assert (
        path == root / staged.sha256
        and (path / "model.safetensors").read_bytes() == (d / "model.safetensors").read_bytes()
    )
    stamp = (path / "config.json").stat().st_mtime_ns
    assert local_weights(store, root, staged.sha256, HF_ZIP) == path
    weights._LOCAL.clear()  # a new worker process on the same host: the copy on disk is used as it is
    assert local_weights(store, root, staged.sha256, HF_ZIP) == path
    assert (path / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in root.iterdir()] == [staged.sha256]  # no temp folder left behind

    st = store.stage(b"not checked here: the upload was")
    store.publish(st)
    f = local_weights(store, root, st.sha256, SAFETENSORS)
    assert f == root / st.sha256 / "model.safetensors" and f.read_bytes() == b"not checked here: the upload was"
    with pytest.raises(ValueError, match="sha256"):
        local_weights(store, root, "../../etc", SAFETENSORS)
