"""Issue 15: the dashboard prints sample counts exactly — the digits set (1797 samples) must not read "1800"."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def test_sample_counts_are_exact(server, page):
    base, key = server.url, server.key
    with (ROOT / "examples" / "digits.npz").open("rb") as fh:
        ds = (
            httpx.post(
                f"{base}/api/v1/datasets",
                files={"file": ("digits.npz", fh)},
                data={"name": "digits 1797"},
                headers={"Authorization": f"Bearer {key}"},
                timeout=120,
            )
            .raise_for_status()
            .json()
        )
    assert ds["n_samples"] == 1797
    page.goto(base + "/signin")
    page.evaluate("k => localStorage.setItem('taskgauge_api_key', k)", key)  # signed in, however sign-in works
    page.goto(f"{base}/datasets/{ds['id']}")
    meta = page.locator("#ds-meta")
    meta.wait_for()
    page.wait_for_function("() => /samples/.test(document.querySelector('#ds-meta').textContent)", timeout=30_000)
    text = meta.inner_text()
    assert re.search(r"\b1797 samples", text), text
    assert "1800" not in text
    page.goto(base + "/")
    row = page.locator("#datasets tbody tr", has_text="digits 1797")
    row.wait_for(timeout=30_000)
    assert "1797" in row.inner_text() and "1800" not in row.inner_text()
    assert not page.js_errors
