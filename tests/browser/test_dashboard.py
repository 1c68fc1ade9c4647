"""The dashboard in a real browser (Debian chromium driven by Playwright) against the embedded server.

One flow, in order: sign in with the one-time link the server printed (the page itself never holds a key), upload a file through
the form, start an analysis and watch its progress reach 100%, open the report and find every plot drawn, download
the report JSON, then compare two datasets, and find a repr_id report's ID-against-layer plot. Each page is saved
under docs/screenshots/.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

import embedded_server
import httpx
import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser
# Screenshots go to a temp folder; set TASKGAUGE_UPDATE_SCREENSHOTS=1 to refresh the committed docs/screenshots/.
SHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("TASKGAUGE_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "taskgauge-screenshots"
)
PLOTS = ["plot-mle", "plot-gride", "plot-twonn", "plot-sharpness", "plot-subspace"]


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def svg_marks(page, selector: str) -> int:
    """Number of drawn data marks (points, bars, heat-map cells, polylines) inside the figure's SVG."""
    return page.eval_on_selector(
        selector, "el => el.querySelectorAll('svg circle, svg rect.cell, svg rect.bar, svg polyline').length"
    )


def api_analysis(server, key: str, dataset_id: str, estimators: dict) -> str:
    h = {"Authorization": f"Bearer {key}"}
    a = (
        httpx.post(
            f"{server.url}/api/v1/analyses",
            json={"dataset_id": dataset_id, "estimators": estimators},
            headers=h,
            timeout=30,
        )
        .raise_for_status()
        .json()
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        s = httpx.get(f"{server.url}/api/v1/analyses/{a['id']}", headers=h, timeout=30).json()
        if s["status"] in ("succeeded", "failed", "cancelled"):
            assert s["status"] == "succeeded", s
            return s["report_id"]
        time.sleep(0.5)
    raise AssertionError("analysis did not finish in 120 s")


def test_dashboard_end_to_end(server, page, tmp_path):
    base = server.url
    first = embedded_server.digits_images(tmp_path / "digits-a.npz", n=300)

    # -- sign in: the page holds no key; the one-time link `taskgauge serve` printed signs this browser in once
    page.goto(base + "/")
    page.wait_for_url(re.compile(r"/signin"))
    assert page.get_by_label("API key").is_visible()
    assert server.key not in page.content()
    shot(page, "signin")
    link = server.signin_url()
    page.goto(link.replace("/signin#", "/signin?next=/#"))
    page.wait_for_url(base + "/")
    assert page.evaluate("localStorage.getItem('taskgauge_api_key')").startswith("tg_")
    assert page.evaluate("localStorage.getItem('taskgauge_api_key')") != server.key

    # -- upload through the form
    page.get_by_label("File").set_input_files(str(first))
    page.get_by_label("Name").fill("digits A")
    page.get_by_role("button", name="Upload").click()
    link = page.locator("#uploaded-link")
    link.wait_for(timeout=60_000)
    expect(page.locator("#datasets tbody tr", has_text="digits A")).to_have_count(1)
    shot(page, "datasets")

    # -- start an analysis and watch the live progress reach 100%
    link.click()
    page.wait_for_selector("#est-choices input")
    assert page.locator("#est-label_sharpness").is_checked()  # labelled data: on by default
    seen: list[str] = []
    page.expose_function("recordProgress", lambda v: seen.append(v))
    page.evaluate("""() => new MutationObserver(() => window.recordProgress(document.querySelector('#an-pct').textContent))
                     .observe(document.querySelector('#an-pct'), {childList: true, characterData: true, subtree: true})""")
    # subspace trains a model: ticking it reveals the model-spec field (a small MLP keeps the test quick)
    assert page.locator("#spec-box").is_hidden()
    page.locator("#est-subspace").check()
    page.get_by_label("Model spec for subspace (JSON, docs/methods.md §4)").fill(
        '{"arch": "mlp", "hidden": [32], "train": {"epochs": 40, "lr": 0.01}}'
    )
    page.get_by_role("button", name="Start analysis").click()
    page.locator("#an-pct", has_text="100%").wait_for(timeout=300_000)  # a loaded 2-core CI machine
    page.locator("#open-report").wait_for()
    assert float(page.eval_on_selector("#an-progress", "e => e.value")) == 1.0
    assert seen and seen[-1] == "100%"
    page.locator("#history tbody a", has_text="open").first.wait_for()
    page.locator("#trends figure svg").first.wait_for()
    assert page.locator("#trends figure").count() >= 4  # one trend plot per headline number
    shot(page, "dataset")

    # -- the report: every plot drawn, thumbnails of the K_F pairs, JSON download
    page.locator("#open-report").click()
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    for fig in PLOTS:
        marks = svg_marks(page, f"#{fig}")
        assert marks > 0, f"{fig} drew nothing: {page.inner_text('#' + fig)}"
    assert page.locator("#plot-gride line.errbar").count() > 0  # Gride error bars
    thumbs = page.locator("#plot-pairs img.thumb")
    assert thumbs.count() >= 2
    page.wait_for_function(
        "() => [...document.querySelectorAll('#plot-pairs img.thumb')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=30_000,
    )
    rows = page.locator("#results tbody tr")
    assert rows.count() >= 4
    shot(page, "report")
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download JSON").click()
    report = json.loads(Path(dl.value.path()).read_text())
    assert report["schema_version"] == 1 and set(report["results"]) >= {
        "mle",
        "twonn",
        "gride",
        "label_sharpness",
        "subspace",
    }
    assert page.url.endswith(report["report_id"])

    # -- compare two datasets side by side
    key = server.key
    second = embedded_server.digits_images(tmp_path / "digits-b.npz", n=300, offset=900)
    with second.open("rb") as fh:
        ds2 = (
            httpx.post(
                f"{base}/api/v1/datasets",
                files={"file": ("digits-b.npz", fh)},
                data={"name": "digits B"},
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            )
            .raise_for_status()
            .json()
        )
    api_analysis(server, key, ds2["id"], {"mle": {}, "twonn": {}})
    page.goto(base + "/")
    page.locator("#datasets tbody input.pick").first.wait_for()
    for name in ("digits A", "digits B"):
        page.get_by_label(f"compare {name}").check()
    page.get_by_role("button", name="Compare selected").click()
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    headers = page.locator("#compare-table thead th").all_inner_texts()
    assert headers[1:] == ["digits A", "digits B"] or sorted(headers[1:]) == ["digits A", "digits B"]
    mle_row = page.locator("#compare-table tbody tr", has_text="mle").inner_text()
    assert "not computed" not in mle_row
    assert "not computed" in page.locator("#compare-table tbody tr", has_text="gride").inner_text()  # only A has it
    assert svg_marks(page, "#compare-plots") > 0
    shot(page, "compare")

    # -- a repr_id report: ID against layer, one marker per layer, d_data as a line, flagged layers in red
    spec = {"arch": "mlp", "hidden": [32, 16]}
    rid = api_analysis(server, key, ds2["id"], {"repr_id": {"model": spec, "max_samples": 300}})
    page.goto(f"{base}/reports/{rid}")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    rep = httpx.get(f"{base}/api/v1/reports/{rid}", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
    profile = rep["results"]["repr_id"]["details"]["profile"]
    flagged = [r for r in profile if r["exceeds_d_data"]]
    assert len(profile) == 3  # Linear-ReLU, Linear-ReLU, the classifier
    assert page.locator("#plot-repr svg g.series[data-name='d_repr'] circle").count() == len(profile)
    assert page.locator("#plot-repr svg g.series[data-name='d_repr > d_data'] circle").count() == len(flagged)
    assert page.locator("#plot-repr svg text.xtick").all_text_contents() == [r["layer"] for r in profile]
    assert page.locator("#plot-repr svg line.hline").count() == 1  # d_data
    page.locator("#plot-repr").screenshot(path=str(SHOTS / "report-repr.png"))
    assert page.js_errors == []
