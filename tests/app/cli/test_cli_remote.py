"""The CLI client: its one error mapper (unit, over httpx.MockTransport) and end to end against the embedded server."""

from __future__ import annotations

import json
import os
import subprocess

import embedded_server  # tests/ (on the path through tests/conftest.py)
import httpx
import pytest

from app.cli.remote import APIClient, APIError  # noqa: E402


def client(handler, **kw) -> APIClient:
    return APIClient("http://tg.test", "k-123", transport=httpx.MockTransport(handler), **kw)


def test_problem_json_becomes_one_readable_message():
    def handler(req):
        assert req.headers["authorization"] == "Bearer k-123"
        return httpx.Response(
            422,
            headers={"content-type": "application/problem+json"},
            json={
                "type": "about:blank",
                "title": "Unprocessable dataset",
                "status": 422,
                "detail": "data.csv: column 'b' is not numeric",
            },
        )

    with client(handler) as api, pytest.raises(APIError) as exc:
        api.post("/datasets", data={"name": "x"})
    assert exc.value.status == 422
    assert exc.value.message == "HTTP 422 Unprocessable dataset: data.csv: column 'b' is not numeric"
    assert exc.value.problem["title"] == "Unprocessable dataset"


def test_401_and_404_carry_hints():
    def handler(req):
        return httpx.Response(401 if req.url.path.endswith("/a") else 404, json={"title": "nope", "status": 0})

    with client(handler, retries=0) as api:
        with pytest.raises(APIError, match=r"^HTTP 401 nope — check the API key"):
            api.get("/a")
        with pytest.raises(APIError, match=r"^HTTP 404 nope — no such id for this API key"):
            api.get("/b")


def test_get_retries_5xx_then_succeeds_but_post_does_not():
    calls = {"GET": 0, "POST": 0}

    def handler(req):
        calls[req.method] += 1
        if calls[req.method] < 3:
            return httpx.Response(503, json={"title": "busy"})
        return httpx.Response(200, json={"ok": True})

    with client(handler) as api:
        assert api.get_json("/x") == {"ok": True}
        with pytest.raises(APIError, match="HTTP 503 busy"):
            api.post("/x", json={})
    assert calls == {"GET": 3, "POST": 1}


def test_connection_refused_says_how_to_fix():
    port = embedded_server.free_port()  # nothing listens there
    with APIClient(f"http://127.0.0.1:{port}", None, retries=0) as api, pytest.raises(APIError) as exc:
        api.get("/datasets")
    assert exc.value.status == 0
    assert f"cannot connect to the taskgauge server at http://127.0.0.1:{port}" in exc.value.message
    assert "taskgauge serve" in exc.value.message


def test_estimator_lists_mean_the_same_locally_and_remotely(monkeypatch, tmp_path):
    """``-e mle,twonn`` is two estimators whether PATH is a file (local) or a dataset id (remote): both paths of
    ``taskgauge analyse`` hand the same parsed requests on (the remote one in its POST /analyses body)."""
    from typer.testing import CliRunner

    from app.cli import cli, local, remote

    seen: dict[str, dict] = {}
    monkeypatch.setattr(
        "taskgauge.pipeline.analyse_file", lambda path, **kw: seen.setdefault("local", kw["requests"]) and {}
    )
    monkeypatch.setattr(local, "render_report", lambda report, console: None)

    def handler(req):
        seen["remote"] = json.loads(req.content)["estimators"]
        return httpx.Response(202, json={"id": "a1", "status": "queued"})

    monkeypatch.setattr(remote, "make_client", lambda url, key: client(handler))
    data = tmp_path / "d.npz"
    data.write_bytes(b"")
    args = ["-e", "mle,twonn", "-e", "gride", "--param", "mle.k=10", "--param", "gride.n1=[1,2]"]
    runner = CliRunner()
    assert runner.invoke(cli, ["analyse", str(data), *args, "-q"]).exit_code == 0
    # remote without --json -: prints the analysis; --json - would watch it (needs a server)
    monkeypatch.setattr(remote, "watch_analysis", lambda api, aid, **kw: {"status": "failed", "error": "stop"})
    runner.invoke(cli, ["analyse", "3f2c9a", *args])
    expected = {"mle": {"k": 10}, "twonn": {}, "gride": {"n1": [1, 2]}}
    assert seen["local"] == expected
    assert seen["remote"] == expected


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = embedded_server.start(tmp_path_factory.mktemp("cli-server"))
    yield srv
    embedded_server.stop(srv)


def tg(server, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGAUGE_")}
    env.update({"TASKGAUGE_API_URL": server.url, "TASKGAUGE_DATA_DIR": str(server.data_dir), "COLUMNS": "200"})
    p = subprocess.run([str(embedded_server.TASKGAUGE), *args], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, f"{args}: rc={p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.mark.integration
def test_cli_upload_analyse_watch_report(server, tmp_path):
    path = embedded_server.digits_images(tmp_path / "digits.npz", n=200)
    ds = json.loads(tg(server, "upload", str(path), "--name", "digits-cli", "--json").stdout)
    assert ds["name"] == "digits-cli" and ds["n_samples"] == 200

    # remote analyse: the argument is a dataset id, not a file; the report JSON comes on stdout
    p = tg(server, "analyse", ds["id"], "-e", "mle", "-e", "twonn", "--param", "mle.k=10", "--json", "-")
    report = json.loads(p.stdout)
    assert set(report["results"]) == {"mle", "twonn"}
    assert report["results"]["mle"]["params"]["k"] == 10
    assert report["dataset"]["id"] == ds["id"]

    # watch an analysis started over the API: the progress bar ends at 100% and --json prints the report
    key = server.key
    a = (
        httpx.post(
            f"{server.url}/api/v1/analyses",
            json={"dataset_id": ds["id"], "estimators": {"gride": {}}},
            headers={"Authorization": f"Bearer {key}"},
        )
        .raise_for_status()
        .json()
    )
    w = tg(server, "watch", a["id"], "--json")
    watched = json.loads(w.stdout)
    assert set(watched["results"]) == {"gride"}
    assert "100.0%" in w.stderr

    r = json.loads(tg(server, "report", watched["report_id"], "--json").stdout)
    assert r == watched
    table = tg(server, "report", a["id"]).stdout  # an analysis id works too
    assert "gride" in table and "digits-cli" in table

    s = tg(server, "status", a["id"]).stdout
    assert s.startswith("succeeded  100.0%")

    c = json.loads(tg(server, "compare", report["report_id"], watched["report_id"], "--json").stdout)
    assert [set(x["results"]) for x in c["reports"]] == [{"mle", "twonn"}, {"gride"}]


@pytest.mark.integration
def test_cli_errors_are_one_line_without_traceback(server, tmp_path):
    bad = tg(server, "report", "does-not-exist", check=False)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and "no report, analysis or dataset with id does-not-exist" in bad.stderr

    bad_key = tg(server, "datasets", "--api-key", "wrong", check=False)
    assert bad_key.returncode == 1 and "HTTP 401" in bad_key.stderr and "check the API key" in bad_key.stderr

    down = tg(server, "datasets", "--api-url", f"http://127.0.0.1:{embedded_server.free_port()}", check=False)
    assert down.returncode == 1 and "cannot connect to the taskgauge server" in down.stderr


@pytest.mark.integration
def test_cli_upload_model_then_analyse_with_it(server, tmp_path):
    """`taskgauge upload-model` stores trained weights; `analyse DATASET -e repr_id --model-spec-id ID` runs on a
    real worker with them: the headline ID equals TwoNN on the in-memory network's activations at that layer."""
    import numpy as np
    import torch

    from estimators.id.twonn import twonn_id
    from estimators.models import build_model
    from estimators.models.pretrained import save_spec_weights

    rng = np.random.default_rng(1)
    X = (rng.normal(size=(200, 3)) @ rng.normal(size=(3, 12))).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    spec = {"arch": "mlp", "hidden": [10]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    net = build_model(spec, (12,), 2, seed=3).eval()
    save_spec_weights(net, tmp_path / "w.safetensors")

    ds = json.loads(tg(server, "upload", str(tmp_path / "d.npz"), "--json").stdout)
    up = tg(
        server,
        "upload-model",
        str(tmp_path / "w.safetensors"),
        "--spec",
        str(tmp_path / "spec.json"),
        "--input-shape",
        "12",
    )
    assert "model spec id" in up.stdout and "mlp for input [12], 2 classes" in up.stdout
    spec_id = up.stdout.split("model spec id")[1].split()[0]
    p = tg(server, "analyse", ds["id"], "-e", "repr_id", "--model-spec-id", spec_id, "--json", "-")
    res = json.loads(p.stdout)["results"]["repr_id"]
    acts = {}
    layer = res["details"]["headline_layer"]
    dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: acts.setdefault("a", o.detach()))
    with torch.no_grad():
        net(torch.from_numpy(X))
    assert res["value"] == pytest.approx(twonn_id(acts["a"], decimation=False).value, rel=1e-12)

    (tmp_path / "w.pt").write_bytes(b"\x80\x04not really")
    bad = tg(server, "upload-model", str(tmp_path / "w.pt"), check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("taskgauge: error: HTTP 422 Pickled weights refused")


def test_every_command_has_help_with_an_example():
    from typer.testing import CliRunner

    from app.cli import cli

    runner = CliRunner()
    for cmd in (
        ["upload"],
        ["upload-model"],
        ["datasets"],
        ["status"],
        ["watch"],
        ["report"],
        ["compare"],
        ["schedule", "add"],
        ["schedule", "list"],
        ["schedule", "rm"],
    ):
        out = runner.invoke(cli, [*cmd, "--help"], env={"COLUMNS": "200"})
        assert out.exit_code == 0, out.output
        assert "Example: taskgauge " + cmd[0] in out.output, (cmd, out.output)
