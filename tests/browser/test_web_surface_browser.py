"""The web surface in a real browser: /docs draws Swagger UI from this server's own files with every other origin
blocked and no CSP violation; the dashboard runs under its CSP; a one-time sign-in link works once; `next` never
leaves the origin."""

from __future__ import annotations

import re

import pytest

from taskgauge.auth import issue_signin_token

pytestmark = pytest.mark.browser


def offline(page, base: str) -> list[str]:
    """Abort every request to another origin; collect console messages about the CSP."""
    blocked: list[str] = []

    def route(r):
        if r.request.url.startswith(base):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.context.route("**/*", route)
    csp: list[str] = []
    page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
    page.csp = csp
    return blocked


def test_docs_render_offline_under_the_csp(server, page):
    blocked = offline(page, server.url)
    page.goto(server.url + "/docs")
    page.locator(".opblock-summary-path", has_text="/api/v1/datasets").first.wait_for(timeout=30_000)
    assert page.locator(".opblock").count() >= 15
    assert blocked == [] and page.csp == [] and page.js_errors == []


def test_signin_link_once_and_next_stays_on_the_origin(server, page):
    blocked = offline(page, server.url)
    token = issue_signin_token(server.data_dir)
    page.goto(f"{server.url}/signin?next=//evil.example/phish#token={token}")
    page.wait_for_url(server.url + "/")  # signed in, and sent to this origin's root, not to evil.example
    assert "token" not in page.url
    page.locator("#datasets").wait_for()
    page.evaluate("localStorage.clear()")
    page.goto(f"{server.url}/signin#token={token}")  # the same link again
    expect_flash = page.locator("#flash")
    expect_flash.wait_for(state="visible", timeout=15_000)
    assert re.search(r"not valid|already used", expect_flash.inner_text())
    assert page.evaluate("localStorage.getItem('taskgauge_api_key')") is None
    # a pasted key with a hostile next also stays here
    page.goto(server.url + "/signin?next=/%5Cevil.example")
    page.get_by_label("API key").fill(server.key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(server.url + "/")
    assert blocked == [] and page.csp == [] and page.js_errors == []
