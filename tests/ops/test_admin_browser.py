"""The connection viewer in a real headless browser (Debian's chromium driven by Playwright)
against the real broker process: log in, filter, search, open a connection, refresh it,
revoke it — and no token ever reaches a page, not even its HTML source.

Saves artifacts/admin-connection.png (the connection detail page after "Refresh now")."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import browser as chromium  # devtools/browser.py
import pytest

from tests.ops.conftest import ARTIFACTS, ROOT, random_id, wait_for

PASSWORD = "correct horse battery staple 42"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium.available(), reason="chromium is not installed (scripts/ensure-system-packages.sh installs it)"
    ),
]


def when(page, field: str) -> datetime:
    """A time the viewer shows as 2026-01-31 12:00:00 UTC."""
    text = page.locator(f".field-{field} .readonly").inner_text().strip()
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)


def broker_shell(stack, code: str) -> str:
    return stack.manage("broker", "shell", "--no-imports", "-c", code).stdout


def stored_secrets(stack, connection_id: str) -> set[str]:
    """Every secret of a connection: the token values (decrypted here, in the broker's settings)
    and the ciphertexts and digests as stored."""
    code = (
        "import json; from broker_app import crypto; from broker_app.models import Connection; "
        f"c = Connection.objects.get(pk={connection_id!r}); "
        "print(json.dumps([crypto.decrypt(getattr(c, f + '_enc'), aad=c.aad(f)) for f in "
        "('access_token', 'refresh_token', 'id_token')] + [c.access_token_enc, c.refresh_token_enc, c.id_token_enc, "
        "c.pkce_verifier_enc, c.state_digest or '', c.nonce_digest]))"
    )
    values = json.loads(broker_shell(stack, code).strip().splitlines()[-1])
    return {value for value in values if value}


@pytest.fixture(scope="module")
def admin_login(ops_stack):
    username = random_id("admin")
    env = {**ops_stack.env, "DJANGO_SETTINGS_MODULE": "dromos.settings.broker", "DJANGO_SUPERUSER_PASSWORD": PASSWORD}
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "createsuperuser",
            "--noinput",
            "--username",
            username,
            "--email",
            "ops@example.test",
        ],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return username


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = chromium.launch(playwright)  # the system's chromium: nothing is downloaded
        yield instance
        instance.close()


def test_operator_filters_opens_refreshes_and_revokes_connections(
    ops_stack, admin_login, browser, webhook_receiver, flaky_provider
):
    workspace = random_id("ws-admin")
    user = random_id("user")
    webhook_secret = (
        ops_stack.manage(
            "broker", "webhook", "add", "--workspace", workspace, "--url", f"{webhook_receiver.url}/hooks/{workspace}"
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    key = ops_stack.new_key(workspace)
    active = ops_stack.connect(key, user_id=user)
    failed = ops_stack.connect(key, user_id=random_id("user"), deny=True)
    elsewhere = ops_stack.connect(key, user_id=random_id("user"), provider="flaky")
    other_workspace_key = ops_stack.new_key(random_id("ws-admin-other"))
    bulk = ops_stack.connect(other_workspace_key, user_id=user)
    webhook_receiver.wait_for(f"/hooks/{workspace}", "connection.activated", active)
    wait_for(lambda: ops_stack.deliveries_settled(workspace), "the delivery's outcome stored")
    secrets = stored_secrets(ops_stack, active) | stored_secrets(ops_stack, bulk)
    secrets |= {key, other_workspace_key, webhook_secret, ops_stack.client_secret, ops_stack.env["BROKER_API_KEY"]}
    assert len(secrets) >= 10

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(10_000)
    sources: list[str] = []
    page.on(
        "response",
        lambda response: (
            sources.append(response.text())
            if response.request.resource_type == "document" and response.status != 302
            else None
        ),
    )
    base = ops_stack.broker_url + "/admin/"

    def no_secret_anywhere():
        html = page.content()
        for secret in secrets:
            assert secret not in html, "a secret value reached the page DOM"
            for source in sources:
                assert secret not in source, "a secret value reached an HTML source"

    def rows() -> set[str]:
        return {text.strip() for text in page.locator("#result_list tbody th a").all_inner_texts()}

    # Log in.
    page.goto(base + "broker_app/connection/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", admin_login)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r"/admin/broker_app/connection/$"))
    assert {active, failed, elsewhere, bulk} <= rows()

    # Filter by workspace (typed: there may be thousands), then status and provider (the sidebar's links).
    filters = page.locator("#changelist-filter")
    page.fill("#filter-workspace", workspace)
    page.press("#filter-workspace", "Enter")
    page.wait_for_url(re.compile(r"workspace="))
    assert rows() == {active, failed, elsewhere}
    filters.locator('details[data-filter-title="status"] a', has_text=re.compile("^failed$", re.I)).click()
    page.wait_for_url(re.compile(r"status__exact=failed"))
    assert rows() == {failed}
    assert "access_denied" in page.locator(f"#result_list tr:has(a:text-is('{failed}')) td.field-failure").inner_text()
    filters.locator('details[data-filter-title="status"] a', has_text=re.compile("^active$", re.I)).click()
    page.wait_for_url(re.compile(r"status__exact=active"))
    assert rows() == {active, elsewhere}
    filters.locator('details[data-filter-title="provider"] a', has_text=re.compile("^local$")).click()
    page.wait_for_url(re.compile(r"provider__id__exact="))
    assert "status__exact=active" in page.url and f"workspace={workspace}" in page.url
    assert rows() == {active}
    assert page.input_value("#filter-workspace") == workspace

    # Search by user id (across workspaces), then by connection id.
    page.goto(base + "broker_app/connection/")
    page.fill("#searchbar", user)
    page.press("#searchbar", "Enter")
    page.wait_for_url(re.compile(r"\?q="))
    assert rows() == {active, bulk}
    page.fill("#searchbar", failed)
    page.press("#searchbar", "Enter")
    page.wait_for_url(re.compile(f"q={failed}"))
    assert rows() == {failed}

    # The failed connection's detail page shows the failure reason.
    page.click(f"#result_list a:text-is('{failed}')")
    page.wait_for_url(re.compile(r"/change/"))
    assert page.locator(".field-error .readonly").inner_text().strip() == "access_denied"
    assert page.locator(".field-status .readonly").inner_text().strip() == "Failed"
    assert "connection.failed" in page.locator("table.audit-trail").inner_text()
    assert page.locator("#refresh-now").count() == 0  # nothing to refresh

    # Open the active connection: scopes, expiry, last refresh, audit trail, webhook deliveries.
    page.goto(base + "broker_app/connection/?q=" + active)
    page.click(f"#result_list a:text-is('{active}')")
    page.wait_for_url(re.compile(r"/change/"))
    assert "offline_access" in page.locator(".field-scopes .readonly").inner_text()
    assert "offline_access" in page.locator(".field-granted_scopes .readonly").inner_text()
    expires = when(page, "token_expires")
    assert expires > datetime.now(UTC) + timedelta(minutes=50)  # the provider's one-hour tokens
    assert page.locator(".field-has_refresh_token img").get_attribute("alt") == "True"
    assert page.locator(".field-error .readonly").inner_text().strip() == "-"
    trail = page.locator("table.audit-trail").inner_text()
    assert "connection.requested" in trail and "connection.activated" in trail
    deliveries = page.locator(".field-webhook_deliveries table").inner_text()
    assert "connection.activated" in deliveries and "delivered" in deliveries
    token_version = page.locator(".field-token_version .readonly").inner_text().strip()

    # Refresh now.
    clicked = datetime.now(UTC).replace(microsecond=0)
    page.click("#refresh-now")
    page.wait_for_selector("ul.messagelist li.success")
    assert "refreshed; the token now expires" in page.locator("ul.messagelist").inner_text()
    assert when(page, "last_refresh") >= clicked
    assert when(page, "token_expires") >= expires
    assert int(page.locator(".field-token_version .readonly").inner_text()) == int(token_version) + 1
    trail = page.locator("table.audit-trail").inner_text()
    assert re.search(rf"token\.refreshed\s+admin:{admin_login}", trail), trail
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-connection.png"), full_page=True)
    secrets |= stored_secrets(ops_stack, active)  # the refreshed tokens too
    no_secret_anywhere()

    # Revoke (a confirmation dialog first).
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#revoke")
    page.wait_for_selector("ul.messagelist li.success")
    assert "revoked, tokens wiped" in page.locator("ul.messagelist").inner_text()
    assert page.locator(".field-status .readonly").inner_text().strip() == "Revoked"
    assert page.locator("#revoke").count() == 0 and page.locator("#refresh-now").count() == 0
    assert re.search(rf"connection\.revoked\s+admin:{admin_login}", page.locator("table.audit-trail").inner_text())

    # The bulk action from the list, on the other workspace's connection.
    page.goto(base + "broker_app/connection/?q=" + bulk)
    page.check(f"#result_list tr:has(a:text-is('{bulk}')) input.action-select")
    page.select_option("select[name=action]", "revoke")
    page.click("button[name=index]")
    page.wait_for_selector("ul.messagelist li.success")
    assert f"Connection {bulk}: revoked" in page.locator("ul.messagelist").inner_text()
    no_secret_anywhere()
    page.close()

    # What the agents see agrees.
    assert ops_stack.gw("GET", f"/v1/check-connection/{active}", key).json()["status"] == "revoked"
    assert ops_stack.gw("GET", f"/v1/token/{active}", key).status_code == 409
    assert ops_stack.gw("GET", f"/v1/check-connection/{bulk}", other_workspace_key).json()["status"] == "revoked"
    webhook_receiver.wait_for(f"/hooks/{workspace}", "connection.revoked", active)
    assert (ARTIFACTS / "admin-connection.png").stat().st_size > 10_000
