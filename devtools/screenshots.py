"""The README's pictures, regenerated: a local stack (as `make run` starts it: SQLite, real
processes, the local OIDC provider) seeded with a few connections, photographed in headless
Chromium.

    python devtools/screenshots.py [--out docs/img] [--only NAME …]   (`make screenshots`)

Writes one PNG per entry of SHOTS, each at its viewport (the admin and the API docs at
1440×860; the hosted connect page at desktop 1280×800 and phone 390×844 width). To add a
picture, add a function taking (page, seeded) and an entry in SHOTS, and show it in the
README (tests/docs/test_screenshots.py checks both)."""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import browser as chromium
import requests
from oidc_consent import complete_consent
from stack import ADMIN_USER, Stack

ROOT = Path(__file__).resolve().parent.parent
RETURN_URL = "http://127.0.0.1:1/oauth/return"  # nothing listens: the consent walk stops there
VIEWPORT = {"width": 1440, "height": 860}
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# The workspace's branding on the connect page (`manage.py workspace brand`).
BRAND_LOGO = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 40 40"><rect width="40" height="40" rx="9" '
    'fill="#0f5132"/><path d="M11 28 L20 11 L29 28 Z" fill="none" stroke="#fff" stroke-width="3.5" '
    'stroke-linejoin="round"/></svg>'
)


@dataclass
class Seeded:
    stack: Stack
    admin_password: str
    active: str  # a connection id, active with tokens, refreshed once
    failed: str  # the user said no at the consent page
    connect_url: str = ""  # a connect session offering two providers, one with a parameter
    reconnect_url: str = ""  # a connect session reconnecting `active`
    used_url: str = ""  # a connect session already spent


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
    seeded = Seeded(stack=stack, admin_password=stack.create_admin(), active=active, failed=failed)
    seed_connect(seeded, headers)
    return seeded


def seed_connect(seeded: Seeded, headers: dict[str, str]) -> None:
    """The hosted connect page's setting: a provider whose template asks for a parameter
    (Zendesk's subdomain, endpoints on the local OIDC provider), the workspace's branding,
    and three connect sessions (a fresh one, a reconnect, a spent one)."""
    stack = seeded.stack
    meta = stack.oidc.metadata
    from stack import CLIENT_ID

    stack.manage(
        "broker", "provider", "upsert", "--name", "helpdesk", "--template", "zendesk",
        "--display-name", "Zendesk", "--authorize-url", meta["authorization_endpoint"],
        "--token-url", meta["token_endpoint"], "--userinfo-url", meta["userinfo_endpoint"],
        "--client-id", CLIENT_ID, f"--client-secret={stack.client_secret}",
        "--default-scopes", "openid email", "--token-auth", "client_secret_basic",
    )  # fmt: skip
    logo = stack.workdir / "brand-logo.svg"
    logo.write_text(BRAND_LOGO)
    stack.manage(
        "broker", "workspace", "brand", "demo", "--display-name", "Acme Agents",
        "--logo", str(logo), "--accent", "#0f5132",
    )  # fmt: skip

    def session(**body) -> str:
        made = requests.post(
            f"{stack.gateway_url}/v1/connect-sessions",
            headers=headers,
            json={"return_url": RETURN_URL, **body},
            timeout=30,
        )
        made.raise_for_status()
        return made.json()["connect_url"]

    seeded.connect_url = session(user_id="grace@example.com", allowed_providers=["local", "helpdesk"])
    seeded.reconnect_url = session(reconnect=seeded.active)
    seeded.used_url = session(user_id="heidi@example.com", allowed_providers=["local"])
    # Spent: the page started a consent flow with it (the provider's page is not followed).
    spend = requests.Session()
    form = spend.get(seeded.used_url, timeout=30)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    started = spend.post(
        seeded.used_url,
        data={"csrfmiddlewaretoken": csrf, "provider": "local"},
        headers={"Referer": seeded.used_url},
        allow_redirects=False,
        timeout=30,
    )
    assert started.status_code == 303, started.status_code


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


def connect_choices(page, seeded: Seeded) -> None:
    """The hosted connect page as the end user first sees it: the workspace's branding and
    the providers the session allows."""
    page.goto(seeded.connect_url)
    page.wait_for_selector("button.provider")


def connect_param_error(page, seeded: Seeded) -> None:
    """A provider that needs a template parameter, a wrong value refused inline."""
    connect_choices(page, seeded)
    page.click("button.provider[value=helpdesk]")
    page.fill("#param_subdomain", "acme.evil.com")
    page.click("button.primary")
    page.wait_for_selector(".error-summary")


def connect_reconnect(page, seeded: Seeded) -> None:
    page.goto(seeded.reconnect_url)
    page.wait_for_selector("button.provider")


def connect_used(page, seeded: Seeded) -> None:
    page.goto(seeded.used_url)
    page.wait_for_selector("[data-error=used]")


@dataclass(frozen=True)
class Shot:
    filename: str
    shoot: Callable
    viewport: dict[str, int] = field(default_factory=lambda: dict(VIEWPORT))
    admin: bool = True  # taken in the browser logged in to the admin (the connect page: a fresh one)


# name → what to photograph, into which file, at which size.
SHOTS: dict[str, Shot] = {
    "admin-connections": Shot("admin-connections.png", admin_connections),
    "admin-connection": Shot("admin-connection.png", admin_connection),
    "api-docs": Shot("api-docs.png", api_docs),
    "connect-desktop": Shot("connect-desktop.png", connect_choices, DESKTOP, admin=False),
    "connect-phone": Shot("connect-phone.png", connect_choices, PHONE, admin=False),
    "connect-param-error-phone": Shot("connect-param-error-phone.png", connect_param_error, PHONE, admin=False),
    "connect-reconnect-desktop": Shot("connect-reconnect-desktop.png", connect_reconnect, DESKTOP, admin=False),
    "connect-used-phone": Shot("connect-used-phone.png", connect_used, PHONE, admin=False),
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
                    shot = SHOTS[name]
                    if shot.admin:
                        shot.shoot(page, seeded)
                        page.screenshot(path=str(out / shot.filename))
                    else:  # the end user's browser: no admin session, its own screen size
                        context = instance.new_context(viewport=shot.viewport)
                        try:
                            fresh = context.new_page()
                            fresh.set_default_timeout(15_000)
                            shot.shoot(fresh, seeded)
                            fresh.screenshot(path=str(out / shot.filename))
                        finally:
                            context.close()
                    saved.append(out / shot.filename)
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
