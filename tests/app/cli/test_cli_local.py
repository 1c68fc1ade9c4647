"""``taskgauge analyse FILE`` (local mode, no server): output formats, params, and exit code 2 on bad input."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from app.cli import BadInput, build_requests, cli, parse_param
from estimators import registry
from estimators.base import EstimatorError, Params, Result
from taskgauge.pipeline import DEFAULT_ESTIMATORS
from taskgauge.settings import get_settings

REPO = Path(__file__).resolve().parents[3]
DIGITS = REPO / "examples" / "digits.npz"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.upper().startswith("TASKGAUGE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TASKGAUGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli, list(args), catch_exceptions=False)


# Test-only estimators, registered for one test and removed afterwards: they make the report-structure
# assertions independent of the real estimators' speed and values.
class _MeanParams(Params):
    scale: float = 1.0
    shift: list[float] = [0.0]


def _mean_fn(X, y, params, *, device, progress):
    progress(0.5, "averaging")
    value = float(X.double().mean()) * params.scale + sum(params.shift)
    return Result(
        value=value,
        ci=(value - 1, value + 1),
        ci_method="test interval",
        details={"n": int(X.shape[0]), "labelled": y is not None},
        warnings=["a test warning"],
    )


def _labels_fn(X, y, params, *, device, progress):
    return Result(value=float(torch.unique(y).numel()))


def _raising_fn(X, y, params, *, device, progress):
    raise EstimatorError("this data cannot be used: reason and fix")


@pytest.fixture
def test_estimators():
    added = {
        "tg_mean": dict(fn=_mean_fn, params=_MeanParams, needs_labels=False),
        "tg_labels": dict(fn=_labels_fn, params=Params, needs_labels=True),
        "tg_raises": dict(fn=_raising_fn, params=Params, needs_labels=False),
    }
    registry.all_estimators()  # load the real ones first
    for name, spec in added.items():
        registry.register(
            name=name, version="0.0.1", params=spec["params"], summary="test only", needs_labels=spec["needs_labels"]
        )(spec["fn"])
    yield
    for name in added:
        registry._REGISTRY.pop(name, None)


def _npz(tmp_path: Path, name: str = "d.npz", labels: bool = True, n: int = 30) -> Path:
    rng = np.random.default_rng(0)
    p = tmp_path / name
    arrays = {"X": rng.normal(size=(n, 4)).astype(np.float32)}
    if labels:
        arrays["y"] = np.arange(n) % 3
    np.savez(p, **arrays)
    return p


# ------------------------------------------------------------------------------------------------ help


def test_help_teaches_with_examples():
    res = invoke("--help")
    assert res.exit_code == 0
    assert "analyse" in res.stdout and "taskgauge analyse examples/digits.npz" in res.stdout
    res = invoke("analyse", "--help")
    assert res.exit_code == 0
    for needle in ("Examples", "--param", "--json", "--model-spec", "--device", "NAME.KEY=VALUE", "mle.k=10"):
        assert needle in res.stdout


# ------------------------------------------------------------------------------------------ happy paths


def test_json_stdout_is_only_the_report(tmp_path, test_estimators):
    p = _npz(tmp_path)
    res = invoke("analyse", str(p), "-e", "tg_mean", "--json", "-")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)  # nothing but JSON on stdout
    assert report["schema_version"] == 1
    assert set(report["results"]) == {"tg_mean"}
    r = report["results"]["tg_mean"]
    X = np.load(p)["X"]
    assert r["value"] == pytest.approx(float(X.astype(np.float64).mean()), rel=1e-6)
    assert r["ci"] == pytest.approx([r["value"] - 1, r["value"] + 1])
    assert r["version"] == "0.0.1" and r["params"] == {"scale": 1.0, "shift": [0.0]}
    assert r["warnings"] == ["a test warning"] and r["details"] == {"n": 30, "labelled": True}
    ds = report["dataset"]
    assert ds["name"] == "d.npz" and ds["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert ds["n_samples"] == 30 and ds["shape"] == [30, 4] and ds["n_classes"] == 3
    assert report["environment"]["device"] == "cpu"


def test_params_are_parsed_as_json_and_nested(tmp_path, test_estimators):
    p = _npz(tmp_path)
    res = invoke(
        "analyse",
        str(p),
        "-e",
        "tg_mean",
        "--param",
        "tg_mean.scale=2",
        "-p",
        "tg_mean.shift=[1, 2.5]",
        "--json",
        "-",
        "-q",
    )
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)["results"]["tg_mean"]
    assert r["params"] == {"scale": 2.0, "shift": [1.0, 2.5]}
    X = np.load(p)["X"].astype(np.float64)
    assert r["value"] == pytest.approx(2 * X.mean() + 3.5, rel=1e-6)


def test_table_output_and_json_file(tmp_path, test_estimators):
    p = _npz(tmp_path)
    out = tmp_path / "rep.json"
    res = invoke("analyse", str(p), "-e", "tg_mean,tg_labels", "--json", str(out))
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert list(report["results"]) == ["tg_mean", "tg_labels"]
    assert report["results"]["tg_labels"]["value"] == 3.0
    value = report["results"]["tg_mean"]["value"]
    for needle in (
        "estimator",
        "value",
        "CI",
        "seconds",
        "warnings",
        "tg_mean",
        "tg_labels",
        f"{value:.4g}",
        "(1) tg_mean: a test warning",
        "d.npz",
        "30 samples",
        "3 classes",
    ):
        assert needle in res.stdout, needle
    assert "report written to" in res.stderr


def test_csv_with_label_column_and_image_zip_with_resize(tmp_path, test_estimators):
    c = tmp_path / "t.csv"
    c.write_text("a,b,kind\n" + "".join(f"{i},{i * i % 7},{'xyz'[i % 3]}\n" for i in range(12)))
    res = invoke("analyse", str(c), "-e", "tg_labels", "--label-column", "kind", "--json", "-", "-q")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["dataset"]["classes"] == ["x", "y", "z"]
    assert report["results"]["tg_labels"]["value"] == 3.0

    z = tmp_path / "imgs.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i, (cls, size) in enumerate([("a", (5, 5)), ("a", (7, 3)), ("b", (4, 6))]):
            b = io.BytesIO()
            Image.fromarray(np.full(size, 255, np.uint8)).save(b, "PNG")
            zf.writestr(f"{cls}/{i}.png", b.getvalue())
    res = invoke("analyse", str(z), "-e", "tg_mean", "--json", "-", "-q")
    assert res.exit_code == 2 and "resize" in res.stderr
    res = invoke("analyse", str(z), "-e", "tg_mean", "--resize", "4x4", "--grayscale", "--json", "-", "-q")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["dataset"]["shape"] == [3, 1, 4, 4]
    assert report["dataset"]["preprocessing"]["resize"] == [4, 4]
    assert report["results"]["tg_mean"]["value"] == pytest.approx(1.0)  # white images scaled to [0, 1]


def test_device_from_settings(tmp_path, test_estimators, monkeypatch):
    monkeypatch.setenv("TASKGAUGE_DEVICE", "cuda")
    get_settings.cache_clear()
    p = _npz(tmp_path)
    res = invoke("analyse", str(p), "-e", "tg_mean", "--json", "-", "-q")
    if torch.cuda.is_available():
        assert res.exit_code == 0 and json.loads(res.stdout)["environment"]["device"].startswith("cuda")
    else:
        assert res.exit_code == 2 and "no CUDA GPU" in res.stderr
    res = invoke("analyse", str(p), "-e", "tg_mean", "--device", "cpu", "--json", "-", "-q")
    assert res.exit_code == 0 and json.loads(res.stdout)["environment"]["device"] == "cpu"


# ------------------------------------------------------------------------------------------ exit code 2


def _assert_bad_input(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr  # one line, no traceback
    assert lines[0].startswith("taskgauge: error: ")
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_missing_file(tmp_path):
    _assert_bad_input(invoke("analyse", str(tmp_path / "nope.npz")), "nope.npz", "not an existing file")


def test_directory(tmp_path):
    _assert_bad_input(invoke("analyse", str(tmp_path)), "is a directory", "zip")


def test_bad_npz(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"PK\x03\x04 definitely truncated")
    _assert_bad_input(invoke("analyse", str(p)), "Corrupt file", "bad.npz")


def test_unknown_estimator(tmp_path):
    _assert_bad_input(invoke("analyse", str(_npz(tmp_path)), "-e", "nosuch"), "unknown estimator 'nosuch'")


@pytest.mark.parametrize(
    ("param", "needle"),
    [
        ("tg_mean.scale", "NAME.KEY=VALUE"),
        ("scale=2", "NAME.KEY=VALUE"),
        ("tg_mean..x=1", "NAME.KEY=VALUE"),
        ("other.k=1", "add -e other"),
        ("tg_mean.scale=big", "scale"),
        ("tg_mean.nokey=1", "Allowed params"),
    ],
)
def test_bad_param(tmp_path, test_estimators, param, needle):
    _assert_bad_input(invoke("analyse", str(_npz(tmp_path)), "-e", "tg_mean", "--param", param), needle)


def test_label_needing_estimator_on_unlabelled_data(tmp_path, test_estimators):
    p = _npz(tmp_path, "nolab.npz", labels=False)
    _assert_bad_input(invoke("analyse", str(p), "-e", "tg_labels"), "needs class labels")
    real = [
        n
        for n, e in registry.all_estimators().items()
        if e.needs_labels and not e.needs_model and not n.startswith("tg_")
    ]
    for name in real:  # the real label-needing estimators (label_sharpness, …) say the same
        _assert_bad_input(invoke("analyse", str(p), "-e", name), f"'{name}' needs class labels")


def test_estimator_error_during_run(tmp_path, test_estimators):
    _assert_bad_input(invoke("analyse", str(_npz(tmp_path)), "-e", "tg_raises"), "reason and fix")


def test_unreadable_model_spec(tmp_path, test_estimators):
    p = _npz(tmp_path)
    _assert_bad_input(
        invoke("analyse", str(p), "-e", "tg_mean", "--model-spec", str(tmp_path / "no.json")), "cannot read model spec"
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{arch: mlp")
    _assert_bad_input(invoke("analyse", str(p), "--model-spec", str(bad)), "not valid JSON")
    bad.write_text("[1, 2]")
    _assert_bad_input(invoke("analyse", str(p), "--model-spec", str(bad)), "must be a JSON object")


def test_bad_setting_and_bad_resize(tmp_path, monkeypatch):
    p = _npz(tmp_path)
    _assert_bad_input(invoke("analyse", str(p), "--resize", "huge"), "HEIGHTxWIDTH")
    monkeypatch.setenv("TASKGAUGE_DEVICE", "tpu")
    get_settings.cache_clear()
    _assert_bad_input(invoke("analyse", str(p)), "TASKGAUGE_DEVICE")


def test_json_file_in_missing_folder(tmp_path, test_estimators):
    res = invoke("analyse", str(_npz(tmp_path)), "-e", "tg_mean", "--json", str(tmp_path / "x" / "r.json"))
    _assert_bad_input(res, "does not exist")


# ------------------------------------------------------------------------------------------- helpers


def test_parse_param_values():
    assert parse_param("mle.k=20") == ("mle", ["k"], 20)
    assert parse_param("a.b=true") == ("a", ["b"], True)
    assert parse_param("a.b=1e-3") == ("a", ["b"], 0.001)
    assert parse_param("a.b=[5, 10]") == ("a", ["b"], [5, 10])
    assert parse_param("a.b=null") == ("a", ["b"], None)
    assert parse_param("a.b=ml") == ("a", ["b"], "ml")
    assert parse_param("a.b=x=y") == ("a", ["b"], "x=y")
    assert parse_param("s.train.lr=0.01") == ("s", ["train", "lr"], 0.01)
    with pytest.raises(BadInput):
        parse_param("novalue")


def test_build_requests_defaults_dedupes_and_nests():
    assert build_requests(None, None, DEFAULT_ESTIMATORS) == {n: {} for n in DEFAULT_ESTIMATORS}
    assert list(build_requests(["mle,twonn", "mle"], None, DEFAULT_ESTIMATORS)) == ["mle", "twonn"]
    req = build_requests(["s"], ["s.train.lr=0.1", "s.train.epochs=3", "s.seeds=2"], DEFAULT_ESTIMATORS)
    assert req == {"s": {"train": {"lr": 0.1, "epochs": 3}, "seeds": 2}}
    with pytest.raises(BadInput, match="already has a value"):
        build_requests(["s"], ["s.a=1", "s.a.b=2"], DEFAULT_ESTIMATORS)
    with pytest.raises(BadInput, match="one of the defaults"):
        build_requests(None, ["label_sharpness.m=5"], DEFAULT_ESTIMATORS)


# ------------------------------------------------------------------------------- the real console script


def test_console_script_on_shipped_digits():
    """The installed ``taskgauge`` script, as a user runs it: stdout must be exactly the report JSON."""
    script = Path(sys.executable).parent / "taskgauge"
    if not script.exists():
        pytest.skip("console script not installed (pip install -e .)")
    available = registry.all_estimators()
    defaults = [n for n in DEFAULT_ESTIMATORS if n in available]
    if not defaults:
        pytest.skip("none of the default estimators is registered yet")
    args = [str(script), "analyse", str(DIGITS), "--json", "-"]
    if len(defaults) < len(DEFAULT_ESTIMATORS):
        for n in defaults:
            args += ["-e", n]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGAUGE_")}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["schema_version"] == 1
    assert list(report["results"]) == defaults
    assert report["dataset"]["n_samples"] == 1797 and report["dataset"]["shape"] == [1797, 64]
    assert report["dataset"]["n_classes"] == 10
    assert report["dataset"]["sha256"] == hashlib.sha256(DIGITS.read_bytes()).hexdigest()
    for name in defaults:
        r = report["results"][name]
        assert isinstance(r["value"], float) and 1.0 < r["value"] < 64.0, (name, r["value"])
        assert r["version"] == available[name].version
    if "mle" in defaults:  # MLE (k=20, MacKay–Ghahramani) on digits ≈ 6.8
        assert report["results"]["mle"]["value"] == pytest.approx(6.8, abs=0.1)


def test_shipped_digits_matches_sklearn_and_regenerates(tmp_path):
    from sklearn.datasets import load_digits

    sys.path.insert(0, str(REPO / "examples"))
    try:
        import make_examples
    finally:
        sys.path.pop(0)
    X, y = load_digits(return_X_y=True)
    with np.load(DIGITS, allow_pickle=False) as z:
        assert sorted(z.files) == ["X", "y"]
        assert z["X"].dtype == np.float32 and z["y"].dtype == np.int64
        np.testing.assert_array_equal(z["X"], X.astype(np.float32))
        np.testing.assert_array_equal(z["y"], y)
    again = make_examples.make_digits(tmp_path / "digits.npz")
    with np.load(again) as a, np.load(DIGITS) as b:
        np.testing.assert_array_equal(a["X"], b["X"])
        np.testing.assert_array_equal(a["y"], b["y"])
