"""The hosted connect page in headless Chromium (Playwright, Debian's chromium) against the
real processes of tests/e2e (gunicorn gateway and broker with production settings, the npm
oidc-provider): open the connect URL, pick a provider, fill a template parameter, sign in
and consent, land on the return URL; reconnect in place as the same user (same id, new
tokens) and as another user (account_mismatch, old tokens still valid). axe-core (npm,
devtools/oidc-provider/package.json) runs in the same browser on every page state and must
report no serious or critical violation. Screenshots go to artifacts/ (and to docs/img/ when
DROMOS_SCREENSHOTS_DIR says so: scripts/connect-screenshots.sh)."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from oidc_consent import complete_consent  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
AXE = ROOT / "devtools" / "oidc-provider" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = ROOT / "artifacts"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

pytestmark = [
    pytest.mark.skipif(not shutil.which("chromium"), reason="chromium is not installed"),
    pytest.mark.skipif(not AXE.is_file(), reason="npm ci --prefix devtools/oidc-provider installs axe-core"),
]


class _Return(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b"<!doctype html><title>Back in the app</title><h1>Back in the app</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def app_return():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Return)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/oauth/return"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def connect_stack(real_stack, tmp_path_factory):
    """The e2e stack plus a provider whose template asks for a parameter (Zendesk's
    subdomain; endpoints pointed at the local OIDC provider) and the workspace's branding."""
    meta = real_stack.oidc.metadata
    from stack import CLIENT_ID

    real_stack.manage(
        "broker",
        "provider",
        "upsert",
        "--name",
        "helpdesk",
        "--template",
        "zendesk",
        "--display-name",
        "Helpdesk (Zendesk template)",
        "--authorize-url",
        meta["authorization_endpoint"],
        "--token-url",
        meta["token_endpoint"],
        "--revocation-url",
        meta["revocation_endpoint"],
        "--userinfo-url",  # Zendesk's /api/v2/users/me, here: no call leaves the machine
        meta["userinfo_endpoint"],
        "--client-id",
        CLIENT_ID,
        f"--client-secret={real_stack.client_secret}",
        "--default-scopes",
        "openid email",
        "--token-auth",
        "client_secret_basic",
    )
    logo = tmp_path_factory.mktemp("brand") / "logo.svg"
    logo.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 40 40"><rect width="40" height="40" rx="8" '
        'fill="#7c2d12"/><path d="M10 28 L20 10 L30 28 Z" fill="#fff"/></svg>'
    )
    real_stack.manage(
        "broker",
        "workspace",
        "brand",
        "demo",
        "--display-name",
        "Acme Agents",
        "--logo",
        str(logo),
        "--accent",
        "#7c2d12",
    )
    return real_stack


def gw(stack, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    return requests.request(method, stack.gateway_url + path, headers=headers, timeout=30, **kwargs)


def axe_check(page, what: str) -> None:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        """async () => await axe.run(document, {runOnly: {type: 'tag',
             values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice']}})"""
    )
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"{what}: " + "; ".join(bad)
    assert result["passes"], f"{what}: axe checked nothing"


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    target = os.environ.get("DROMOS_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=True)


def sign_in_and_consent(page, login: str) -> None:
    """The oidc-provider's devInteractions pages: a login form, then a consent form."""
    if page.locator("input[name=login]").count():
        page.fill("input[name=login]", login)
        page.fill("input[name=password]", "any-password")
        page.click("button[type=submit]")
    page.wait_for_selector("button[type=submit]")
    page.click("button[type=submit]")


def test_hosted_page_end_to_end_with_a_template_parameter(connect_stack, browser, app_return):
    created = gw(
        connect_stack,
        "POST",
        "/v1/connect-sessions",
        json={
            "user_id": "user-browser",
            "allowed_providers": ["helpdesk", "local"],
            "return_url": app_return,
            "tags": {"team": "support"},
        },
    )
    assert created.status_code == 201, created.text
    session = created.json()
    token = session["connect_url"].rsplit("/", 1)[1]

    for viewport, suffix in ((DESKTOP, "desktop"), (PHONE, "phone")):
        context = browser.new_context(viewport=viewport, bypass_csp=True)
        page = context.new_page()
        page.goto(session["connect_url"])
        assert page.locator("h1").inner_text() == "Connect an account"
        assert page.locator("button.provider").count() == 2
        shot(page, f"connect-{suffix}")
        axe_check(page, f"provider list ({suffix})")
        # Keyboard only: the skip link, then the providers, in order.
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.value") == "helpdesk"
        page.keyboard.press("Enter")
        page.wait_for_selector("#param_subdomain")
        axe_check(page, f"parameter form ({suffix})")
        page.fill("#param_subdomain", "evil.com#")
        page.click("button.primary")
        page.wait_for_selector(".error-summary")
        assert page.locator("#param_subdomain").get_attribute("aria-invalid") == "true"
        shot(page, f"connect-error-{suffix}")
        axe_check(page, f"parameter error ({suffix})")
        context.close()

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(session["connect_url"])
    page.click("button.provider[value=helpdesk]")
    page.fill("#param_subdomain", "acme")
    page.click("button.primary")
    sign_in_and_consent(page, "alice")
    page.wait_for_url(app_return + "?*")
    query = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
    assert query["status"] == "success", page.url
    connection_id = query["connection_id"]
    assert page.locator("h1").inner_text() == "Back in the app"

    checked = gw(connect_stack, "GET", f"/v1/check-connection/{connection_id}").json()
    assert checked["status"] == "active" and checked["tags"] == {"team": "support"}
    assert checked["connect_session_id"] == session["session_id"]
    state = gw(connect_stack, "GET", f"/v1/connect-sessions/{session['session_id']}").json()
    assert state["status"] == "completed" and state["connections"][0]["connection_id"] == connection_id
    assert gw(connect_stack, "GET", f"/v1/token/{connection_id}").status_code == 200

    # The link is spent: reopened, a clear page (410), checked by axe too.
    page.goto(session["connect_url"])
    assert "can no longer be used" in page.locator("h1").inner_text()
    context.close()
    context = browser.new_context(viewport=PHONE, bypass_csp=True)
    page = context.new_page()
    response = page.goto(session["connect_url"])
    assert response.status == 410
    axe_check(page, "used link page")
    context.close()
    # The token never reached a log line of any process.
    for name in ("broker", "gateway", "worker"):
        assert token not in connect_stack.log(name), name


def _userinfo(stack, access_token: str) -> int:
    url = stack.oidc.metadata["userinfo_endpoint"]
    return requests.get(url, headers={"Authorization": f"Bearer {access_token}"}, timeout=10).status_code


def test_reconnect_in_place_same_user_then_another_user(connect_stack, browser, app_return):
    started = gw(
        connect_stack,
        "POST",
        "/v1/request-connection",
        json={
            "user_id": "user-reconnect",
            "provider_name": "local",
            "scopes": ["openid", "email", "offline_access"],
            "return_url": app_return,
        },
    ).json()
    complete_consent(started["authUrl"], login="alice", stop_at_prefix=app_return)
    connection_id = started["connection_id"]
    first = gw(connect_stack, "GET", f"/v1/token/{connection_id}").json()["access_token"]

    # Same user, through a reconnect session on the hosted page, asking for one more scope.
    session = gw(
        connect_stack,
        "POST",
        "/v1/connect-sessions",
        json={"reconnect": connection_id, "return_url": app_return, "scopes": {"local": ["profile"]}},
    ).json()
    context = browser.new_context(viewport=DESKTOP, bypass_csp=True)
    page = context.new_page()
    page.goto(session["connect_url"])
    assert page.locator("h1").inner_text() == "Reconnect your account"
    axe_check(page, "reconnect page")
    page.click("button.provider")
    # While the user is at the provider, the old token is still served.
    assert gw(connect_stack, "GET", f"/v1/token/{connection_id}").json()["access_token"] == first
    sign_in_and_consent(page, "alice")
    page.wait_for_url(app_return + "?*")
    query = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
    assert query == {"status": "success", "connection_id": connection_id}
    context.close()
    second = gw(connect_stack, "GET", f"/v1/token/{connection_id}").json()
    assert second["access_token"] != first and second["connection_id"] == connection_id
    assert "profile" in gw(connect_stack, "GET", f"/v1/check-connection/{connection_id}").json()["scopes"]

    # Another user consents: account_mismatch, nothing changes, the old token still works.
    again = gw(connect_stack, "POST", f"/v1/connections/{connection_id}/reconnect", json={})
    assert again.status_code == 201 and again.json()["connection_id"] == connection_id
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(again.json()["authUrl"])
    sign_in_and_consent(page, "mallory")
    page.wait_for_url(app_return + "?*")
    query = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
    assert query == {"status": "error", "error": "account_mismatch", "connection_id": connection_id}
    context.close()
    after = gw(connect_stack, "GET", f"/v1/token/{connection_id}").json()
    assert after["access_token"] == second["access_token"]
    assert _userinfo(connect_stack, after["access_token"]) == 200
    checked = gw(connect_stack, "GET", f"/v1/check-connection/{connection_id}").json()
    assert checked["status"] == "active" and checked["account"]["sub"] == "alice"


def test_reconnect_in_place_by_userinfo_account_against_the_real_provider(connect_stack, app_return):
    """A provider whose account id comes from its userinfo endpoint (the catalog's `docusign`
    template: `account_id_field = "userinfo.sub"`), its endpoints on the npm oidc-provider:
    the first consent records the `sub` its userinfo endpoint names; a reconnect by the same
    user completes in place, one by another user ends account_mismatch, old token kept."""
    meta = connect_stack.oidc.metadata
    from stack import CLIENT_ID

    connect_stack.manage(
        "broker", "provider", "upsert", "--name", "esign", "--template", "docusign",
        "--authorize-url", meta["authorization_endpoint"], "--token-url", meta["token_endpoint"],
        "--userinfo-url", meta["userinfo_endpoint"], "--client-id", CLIENT_ID,
        f"--client-secret={connect_stack.client_secret}", "--default-scopes", "openid email",
    )  # fmt: skip
    started = gw(
        connect_stack,
        "POST",
        "/v1/request-connection",
        json={"user_id": "user-esign", "provider_name": "esign", "return_url": app_return},
    )
    assert started.status_code == 201, started.text
    landed = complete_consent(started.json()["authUrl"], login="alice", stop_at_prefix=app_return)
    assert "status=success" in landed, landed
    connection_id = started.json()["connection_id"]
    first = gw(connect_stack, "GET", f"/v1/token/{connection_id}").json()["access_token"]

    def reconnect(login: str) -> dict[str, str]:
        again = gw(connect_stack, "POST", f"/v1/connections/{connection_id}/reconnect", json={})
        assert again.status_code == 201 and again.json()["connection_id"] == connection_id, again.text
        landed = complete_consent(again.json()["authUrl"], login=login, stop_at_prefix=app_return)
        return {k: v[0] for k, v in parse_qs(urlsplit(landed).query).items()}

    assert reconnect("alice") == {"status": "success", "connection_id": connection_id}
    second = gw(connect_stack, "GET", f"/v1/token/{connection_id}").json()["access_token"]
    assert second != first
    assert reconnect("mallory") == {"status": "error", "error": "account_mismatch", "connection_id": connection_id}
    assert gw(connect_stack, "GET", f"/v1/token/{connection_id}").json()["access_token"] == second
    assert _userinfo(connect_stack, second) == 200  # the kept token still works at the provider
    assert gw(connect_stack, "GET", f"/v1/check-connection/{connection_id}").json()["status"] == "active"
