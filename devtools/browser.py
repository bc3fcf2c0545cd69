"""Headless Chromium for the admin browser tests and devtools/screenshots.py: Debian's
`chromium` (scripts/ensure-system-packages.sh installs it) driven by Playwright; nothing
is downloaded."""

from __future__ import annotations

import re
import shutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def available() -> bool:
    return shutil.which("chromium") is not None


def launch(playwright):
    """A headless browser (close it, or leave the `sync_playwright()` block, when done)."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
    )


def admin_login(page, admin_url: str, username: str, password: str) -> None:
    """Log in to the Django admin at admin_url (…/admin/) through its login form."""
    page.goto(admin_url)
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(re.escape(admin_url) + r"$"))
