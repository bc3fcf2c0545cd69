"""The admin login `make run` prints works in a real browser: the URL, user and password it
printed once, typed into the admin's login form in headless Chromium, open the connection
list with the demo's connection in it."""

from __future__ import annotations

import browser as chromium  # devtools/browser.py
import pytest

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium.available(), reason="chromium is not installed (scripts/ensure-system-packages.sh installs it)"
    ),
]


def test_the_printed_admin_login_works_in_the_browser(run_stack):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = chromium.launch(playwright)
        try:
            page = instance.new_page()
            page.set_default_timeout(15_000)
            page.goto(run_stack.admin_url)
            assert "/admin/login/" in page.url  # not logged in yet
            chromium.admin_login(page, run_stack.admin_url, run_stack.admin_user, run_stack.admin_password)
            page.goto(run_stack.admin_url + "broker_app/connection/")
            rows = page.locator("#result_list tbody tr")
            assert "demo-user" in rows.first.inner_text()  # the connection make run's demo made
            assert "Active" in page.locator("#result_list").inner_text()
        finally:
            instance.close()
