"""Fixtures shared by the estimator tests."""

import os

import pytest
from tiny_models import make_tiny_bert

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach the network


@pytest.fixture
def tiny_bert_dir(tmp_path):
    pytest.importorskip("transformers")
    return make_tiny_bert(tmp_path / "tiny-bert")
