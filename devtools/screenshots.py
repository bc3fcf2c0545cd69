"""The README's pictures, regenerated: a local stack (as `make run` starts it: SQLite, real
processes, the local OIDC provider) seeded with a few connections, photographed in headless
Chromium.

    python devtools/screenshots.py [--out docs/img] [--only NAME …]   (`make screenshots`)

Writes one PNG per entry of SHOTS (1440×860 viewport). To add a picture, add a function
taking (page, seeded) and an entry in SHOTS, and show it in the README; the hosted connect
page (once it exists) is one more entry."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import browser as chromium
import requests
from oidc_consent import complete_consent
from stack import ADMIN_USER, Stack

ROOT = Path(__file__).resolve().parent.parent
RETURN_URL = "http://127.0.0.1:1/oauth/return"  # nothing listens: the consent walk stops there
VIEWPORT = {"width": 1440, "height": 860}


@dataclass
class Seeded:
    stack: Stack
    admin_password: str
    active: str  # a connection id, active with tokens, refreshed once
    failed: str  # the user said no at the consent page


def _connect(stack: Stack, key: str, user_id: str, *, login: str, deny: bool = False, consent: bool = True) -> str:
    started = requests.post(
        f"{stack.gateway_url}/v1/request-connection",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "user_id": user_id,
            "provider_name": "local",
            "scopes": ["openid", "email", "profile", "offline_access"],
            "return_url": RETURN_URL,
        },
        timeout=30,
    )
    started.raise_for_status()
    if consent:
        complete_consent(started.json()["authUrl"], login=login, deny=deny, stop_at_prefix=RETURN_URL)
    return started.json()["connection_id"]


def seed(stack: Stack) -> Seeded:
    """Two workspaces, connections in every status the list shows, one refresh, one revocation."""
    other = stack.manage("gateway", "apikey", "create", "--workspace", "support-bot", "--name", "screenshots")
    support_key = other.stdout.strip().splitlines()[-1]
    active = _connect(stack, stack.api_key, "alice@example.com", login="alice")
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    requests.post(f"{stack.gateway_url}/v1/refresh/{active}", headers=headers, timeout=30).raise_for_status()
    _connect(stack, stack.api_key, "bob@example.com", login="bob")
    failed = _connect(stack, stack.api_key, "carol@example.com", login="carol", deny=True)
    _connect(stack, stack.api_key, "dave@example.com", login="dave", consent=False)  # still pending
    _connect(stack, support_key, "erin@example.com", login="erin")
    revoked = _connect(stack, support_key, "frank@example.com", login="frank")
    support = {"Authorization": f"Bearer {support_key}"}
    requests.delete(f"{stack.gateway_url}/v1/connections/{revoked}", headers=support, timeout=30).raise_for_status()
    return Seeded(stack=stack, admin_password=stack.create_admin(), active=active, failed=failed)


def admin_connections(page, seeded: Seeded) -> None:
    page.goto(f"{seeded.stack.broker_url}/admin/broker_app/connection/")
    page.wait_for_selector("#result_list")


def admin_connection(page, seeded: Seeded) -> None:
    page.goto(f"{seeded.stack.broker_url}/admin/broker_app/connection/?q={seeded.active}")
    page.click(f"#result_list a:text-is('{seeded.active}')")
    page.wait_for_selector("table.audit-trail")


def api_docs(page, seeded: Seeded) -> None:
    page.goto(f"{seeded.stack.gateway_url}/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)


# name → (file, what to photograph). Pages behind the admin login get a logged-in page.
SHOTS: dict[str, tuple[str, Callable]] = {
    "admin-connections": ("admin-connections.png", admin_connections),
    "admin-connection": ("admin-connection.png", admin_connection),
    "api-docs": ("api-docs.png", api_docs),
    # "connect-page": ("connect-page.png", connect_page),  — the hosted connect page, once it exists
}


def take(out: Path, only: list[str] | None = None, workdir: Path | None = None) -> list[Path]:
    from playwright.sync_api import sync_playwright

    names = only or list(SHOTS)
    unknown = set(names) - set(SHOTS)
    if unknown:
        raise SystemExit(f"unknown screenshot(s): {', '.join(sorted(unknown))}; known: {', '.join(SHOTS)}")
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with (
        tempfile.TemporaryDirectory(prefix="dromos-screenshots-") as tmp,
        Stack(workdir=workdir or Path(tmp), celery=False, gateway_workers=1, broker_workers=1) as stack,
    ):
        seeded = seed(stack)
        with sync_playwright() as playwright:
            instance = chromium.launch(playwright)
            try:
                page = instance.new_page(viewport=VIEWPORT)
                page.set_default_timeout(15_000)
                chromium.admin_login(page, f"{stack.broker_url}/admin/", ADMIN_USER, seeded.admin_password)
                # The admin's navigation sidebar closed: the pictures are about the page itself.
                page.evaluate("localStorage.setItem('django.admin.navSidebarIsOpen', 'false')")
                for name in names:
                    filename, shoot = SHOTS[name]
                    shoot(page, seeded)
                    page.screenshot(path=str(out / filename))
                    saved.append(out / filename)
            finally:
                instance.close()
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"), help="where the PNGs go (default docs/img)")
    parser.add_argument("--only", nargs="+", choices=list(SHOTS), help="just these pictures")
    args = parser.parse_args()
    if not chromium.available():
        print("chromium is not installed (scripts/ensure-system-packages.sh installs it)", file=sys.stderr)
        return 1
    for path in take(Path(args.out), args.only):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
