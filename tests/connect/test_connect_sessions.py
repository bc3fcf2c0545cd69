"""Connect sessions, the hosted connect page and reconnect in place (issue 16), over real
HTTP: agent → gateway → broker, browser → /connect/{token} → fake provider → /auth/callback."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.utils import timezone

from broker_app.models import AuditEvent, ConnectAttempt, Connection, ConnectSession
from tests.conftest import auth_params, connect, make_provider

pytestmark = pytest.mark.django_db(transaction=True)
RETURN_URL = "https://app.example.com/oauth/return"


def create_session(stack, key, **body) -> dict:
    payload = {"user_id": "user-1", "return_url": RETURN_URL, **body}
    response = stack.call("POST", "/v1/connect-sessions", key, json=payload)
    assert response.status_code == 201, response.text
    assert response.headers["Cache-Control"] == "no-store"
    return response.json()


class Browser:
    """A person's browser on the hosted page: keeps cookies, reads the CSRF token from the form."""

    def __init__(self, connect_url: str) -> None:
        self.url = connect_url
        self.http = requests.Session()
        self.http.trust_env = False
        self.page = ""

    def open(self) -> requests.Response:
        response = self.http.get(self.url, allow_redirects=False, timeout=30)
        self.page = response.text
        return response

    def csrf(self) -> str:
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', self.page)
        assert match, self.page[:500]
        return match.group(1)

    def post(self, csrf: str | None = None, **fields: str) -> requests.Response:
        data = {"csrfmiddlewaretoken": self.csrf() if csrf is None else csrf, **fields}
        response = self.http.post(self.url, data=data, allow_redirects=False, timeout=30, headers={"Referer": self.url})
        self.page = response.text
        return response


def consent(stack, fake_provider, auth_url: str, *, sub: str = "user-1", scope: str | None = None):
    params = auth_params(auth_url)
    code = fake_provider.issue_code(
        code_challenge=params["code_challenge"], nonce=params.get("nonce"), sub=sub, scope=scope
    )
    return stack.callback(code=code, state=params["state"], iss=fake_provider.issuer)


def back_query(response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(RETURN_URL), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@pytest.fixture
def zendesk_like(db, fake_provider):
    """A provider whose template asks the user for a parameter (Zendesk's subdomain), its
    endpoints pointed at the fake provider."""
    from fake_provider import CLIENT_ID, CLIENT_SECRET

    return make_provider(
        name="helpdesk",
        template="zendesk",
        discovery_url="",
        authorize_url=f"{fake_provider.url}/authorize",
        token_url=f"{fake_provider.url}/token",
        revocation_url=f"{fake_provider.url}/revoke",
        userinfo_url=f"{fake_provider.url}/userinfo",  # Zendesk's /api/v2/users/me, here
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        default_scopes=["read"],
        token_auth="client_secret_basic",
    )


def test_session_page_param_consent_and_return(stack, fake_provider, fake_provider_row, zendesk_like):
    key = stack.key("ws-a")
    created = create_session(
        stack,
        key,
        allowed_providers=["helpdesk", "fake"],
        scopes={"helpdesk": ["read", "write"]},
        tags={"team": "support", "env": "prod"},
        expires_in=600,
    )
    assert created["session_id"].startswith("cs_")
    assert created["connect_url"].startswith(stack.url + "/connect/")
    token = created["connect_url"].rsplit("/", 1)[1]
    assert not ConnectSession.objects.filter(token_digest=token).exists()  # stored hashed

    browser = Browser(created["connect_url"])
    page = browser.open()
    assert page.status_code == 200
    assert "Zendesk" not in page.text or "helpdesk" in page.text
    assert 'value="helpdesk"' in page.text and 'value="fake"' in page.text
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert "/static/connect/logos/zendesk.svg" in page.text

    step = browser.post(provider="helpdesk")
    assert step.status_code == 200 and 'name="param_subdomain"' in step.text
    assert '<label for="param_subdomain">' in step.text

    # Injection attempts are refused inline, with the field marked and no connection made.
    for bad in ("evil.com#", "x.evil.com", "acme\r\nSet-Cookie: a=b", "a" * 1000, ""):
        refused = browser.post(provider="helpdesk", step="connect", param_subdomain=bad)
        assert refused.status_code == 400, bad
        assert 'aria-invalid="true"' in refused.text and 'class="error-summary"' in refused.text
        assert "Set-Cookie: a=b" not in unescape(refused.text).replace("\r\n", " ") or bad != ""
    assert Connection.objects.count() == 0
    assert ConnectSession.objects.get().status == "pending"  # a refusal leaves the link usable

    started = browser.post(provider="helpdesk", step="connect", param_subdomain="acme")
    assert started.status_code == 303, started.text
    auth_url = started.headers["Location"]
    assert auth_url.startswith(fake_provider.url + "/authorize")
    assert auth_params(auth_url)["scope"] == "read write"

    # The link is spent: reopened, it says so (410), and a second start is refused.
    again = Browser(created["connect_url"])
    assert again.open().status_code == 410
    assert 'data-error="used"' in again.page

    back = back_query(consent(stack, fake_provider, auth_url))
    assert back["status"] == "success"
    connection = Connection.objects.get(pk=back["connection_id"])
    assert connection.status == "active" and connection.params == {"subdomain": "acme"}
    assert connection.tags == {"team": "support", "env": "prod"}

    detail = stack.call("GET", f"/v1/connect-sessions/{created['session_id']}", key)
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert body["status"] == "completed" and [c["connection_id"] for c in body["connections"]] == [connection.id]
    assert body["connections"][0]["tags"] == {"team": "support", "env": "prod"}
    assert token not in detail.text

    listed = stack.call("GET", "/v1/connections?tag=team:support&tag=env:prod", key).json()
    assert [c["connection_id"] for c in listed["results"]] == [connection.id]
    assert stack.call("GET", "/v1/connections?tag=team:sales", key).json()["count"] == 0
    assert stack.call("GET", "/v1/connections?tag=nocolon", key).status_code == 400
    assert stack.call("GET", "/v1/connections?tag=bad%20key:x", key).status_code == 400
    # Another workspace cannot read the session.
    assert stack.call("GET", f"/v1/connect-sessions/{created['session_id']}", stack.key("ws-b")).status_code == 404


def test_bad_tokens_are_clear_pages_without_a_connection(stack, fake_provider_row):
    key = stack.key("ws-a")
    created = create_session(stack, key)
    url = created["connect_url"]
    token = url.rsplit("/", 1)[1]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for path, status, code in (
        (f"/connect/{tampered}", 404, "unknown"),
        ("/connect/" + "x" * 43, 404, "unknown"),
        ("/connect/short", 404, "unknown"),
    ):
        response = requests.get(stack.url + path, timeout=30)
        assert response.status_code == status, path
        assert f'data-error="{code}"' in response.text and "Traceback" not in response.text

    ConnectSession.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = requests.get(url, timeout=30)
    assert expired.status_code == 410 and 'data-error="expired"' in expired.text
    assert stack.call("GET", f"/v1/connect-sessions/{created['session_id']}", key).json()["status"] == "expired"
    assert Connection.objects.count() == 0


def test_forced_provider_and_csrf_are_refused(stack, fake_provider, fake_provider_row, zendesk_like):
    key = stack.key("ws-a")
    created = create_session(stack, key, allowed_providers=["fake"])
    browser = Browser(created["connect_url"])
    assert browser.open().status_code == 200
    assert 'value="helpdesk"' not in browser.page
    forced = browser.post(provider="helpdesk", step="connect", param_subdomain="acme")
    assert forced.status_code == 400 and 'data-error="provider_not_allowed"' in forced.text
    # No CSRF token, or a wrong one: 403, the page's own words, nothing started.
    no_token = requests.post(created["connect_url"], data={"provider": "fake"}, allow_redirects=False, timeout=30)
    assert no_token.status_code == 403 and 'data-error="csrf"' in no_token.text
    wrong = browser.post(csrf="x" * 64, provider="fake")
    assert wrong.status_code == 403
    assert Connection.objects.count() == 0 and ConnectSession.objects.get().status == "pending"
    browser.open()
    ok = browser.post(provider="fake")
    assert ok.status_code == 303


def test_two_browsers_at_once_make_one_connection(stack, fake_provider, fake_provider_row):
    from concurrent.futures import ThreadPoolExecutor

    key = stack.key("ws-a")
    created = create_session(stack, key, allowed_providers=["fake"])
    browsers = [Browser(created["connect_url"]) for _ in range(4)]
    for browser in browsers:
        assert browser.open().status_code == 200
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda b: b.post(provider="fake").status_code, browsers))
    assert sorted(answers) == [303, 410, 410, 410], answers
    assert Connection.objects.count() == 1


def test_session_input_is_validated(stack, fake_provider_row):
    key = stack.key("ws-a")
    base = {"user_id": "u", "return_url": RETURN_URL}
    for body, field in (
        ({**base, "return_url": "https://evil.example.net/x"}, "return_url"),
        ({**base, "allowed_providers": ["nope"]}, "provider_name"),
        ({**base, "scopes": {"other": ["a"]}}, "scopes"),
        ({**base, "expires_in": 86401}, "expires_in"),
        ({**base, "expires_in": 5}, "expires_in"),
        ({**base, "tags": {f"k{i}": "v" for i in range(21)}}, "tags"),
        ({**base, "tags": {"bad key": "v"}}, "tags"),
        ({**base, "tags": {"k": "v" * 257}}, "tags"),
        ({**base, "tags": {"k": "a\nb"}}, "tags"),
        ({"return_url": RETURN_URL}, "user_id"),
        ({**base, "reconnect": "c_unknown"}, None),
    ):
        response = stack.call("POST", "/v1/connect-sessions", key, json=body)
        assert response.status_code in (400, 404), (body, response.text)
        if field is None:
            assert response.status_code == 404
    assert ConnectSession.objects.count() == 0
    assert stack.call("GET", "/v1/connect-sessions/cs_unknown", key).status_code == 404
    assert stack.call("GET", "/v1/connect-sessions/not-a-session", key).status_code == 400


def test_reconnect_same_account_keeps_id_and_replaces_tokens(stack, fake_provider, fake_provider_row):
    key = stack.key("ws-a")
    cid = connect(stack, fake_provider, key)
    before = Connection.objects.get(pk=cid)
    old_token = stack.call("GET", f"/v1/token/{cid}", key).json()["access_token"]

    started = stack.call("POST", f"/v1/connections/{cid}/reconnect", key, json={"scopes": ["profile"]})
    assert started.status_code == 201, started.text
    assert started.json()["connection_id"] == cid
    assert auth_params(started.json()["authUrl"])["scope"] == "openid email profile"
    # While pending, the connection is untouched and its token still served.
    assert Connection.objects.get(pk=cid).status == "active"
    assert stack.call("GET", f"/v1/token/{cid}", key).json()["access_token"] == old_token

    back = back_query(consent(stack, fake_provider, started.json()["authUrl"], scope="openid email profile"))
    assert back == {"status": "success", "connection_id": cid}
    after = Connection.objects.get(pk=cid)
    assert after.token_version > before.token_version and after.status == "active"
    assert after.scopes == ["openid", "email", "profile"] and "profile" in after.granted_scopes
    new_token = stack.call("GET", f"/v1/token/{cid}", key).json()["access_token"]
    assert new_token != old_token
    assert AuditEvent.objects.filter(connection_id=cid, action="connection.reconnected").exists()
    assert Connection.objects.count() == 1


def test_reconnect_by_another_account_changes_nothing(stack, fake_provider, fake_provider_row):
    key = stack.key("ws-a")
    cid = connect(stack, fake_provider, key)
    before = Connection.objects.get(pk=cid)
    old_token = stack.call("GET", f"/v1/token/{cid}", key).json()["access_token"]
    started = stack.call("POST", f"/v1/connections/{cid}/reconnect", key, json={}).json()
    back = back_query(consent(stack, fake_provider, started["authUrl"], sub="someone-else"))
    assert back == {"status": "error", "error": "account_mismatch", "connection_id": cid}
    after = Connection.objects.get(pk=cid)
    for field in ("status", "access_token_enc", "refresh_token_enc", "token_version", "account", "scopes"):
        assert getattr(after, field) == getattr(before, field), field
    assert stack.call("GET", f"/v1/token/{cid}", key).json()["access_token"] == old_token
    audit = AuditEvent.objects.get(connection_id=cid, action="connection.reconnect_failed")
    assert audit.detail == {"error": "account_mismatch"}
    assert ConnectAttempt.objects.get().status == "failed"
    # The same state cannot be replayed.
    replay = consent(stack, fake_provider, started["authUrl"])
    assert replay.status_code == 400


def test_reconnect_refusals(stack, fake_provider, fake_provider_row):
    key = stack.key("ws-a")
    cid = connect(stack, fake_provider, key)
    assert stack.call("POST", f"/v1/connections/{cid}/reconnect", stack.key("ws-b"), json={}).status_code == 404
    bad = stack.call("POST", f"/v1/connections/{cid}/reconnect", key, json={"return_url": "https://evil.test/x"})
    assert bad.status_code == 400
    assert stack.call("DELETE", f"/v1/connections/{cid}", key).status_code == 200
    revoked = stack.call("POST", f"/v1/connections/{cid}/reconnect", key, json={})
    assert revoked.status_code == 409 and "revoked" in revoked.json()["message"]
    assert ConnectAttempt.objects.count() == 0


def test_failed_connection_reconnects_through_a_session(stack, fake_provider, fake_provider_row):
    key = stack.key("ws-a")
    cid = connect(stack, fake_provider, key)
    Connection.objects.filter(pk=cid).update(status="failed", error="invalid_grant")
    created = create_session(stack, key, reconnect=cid)
    browser = Browser(created["connect_url"])
    assert browser.open().status_code == 200 and "Reconnect" in browser.page
    started = browser.post(provider="fake")
    assert started.status_code == 303
    back = back_query(consent(stack, fake_provider, started.headers["Location"]))
    assert back == {"status": "success", "connection_id": cid}
    assert Connection.objects.get(pk=cid).status == "active"
    detail = stack.call("GET", f"/v1/connect-sessions/{created['session_id']}", key).json()
    assert detail["status"] == "completed" and detail["connections"][0]["connection_id"] == cid


def test_denied_reconnect_keeps_the_connection(stack, fake_provider, fake_provider_row):
    key = stack.key("ws-a")
    cid = connect(stack, fake_provider, key)
    started = stack.call("POST", f"/v1/connections/{cid}/reconnect", key, json={}).json()
    state = auth_params(started["authUrl"])["state"]
    back = back_query(stack.callback(state=state, error="access_denied"))
    assert back == {"status": "error", "error": "access_denied", "connection_id": cid}
    assert Connection.objects.get(pk=cid).status == "active"


def test_a_link_lives_30_minutes_by_default_and_the_page_has_no_script(stack, fake_provider_row, zendesk_like):
    from datetime import datetime

    key = stack.key("ws-a")
    before = timezone.now()
    created = create_session(stack, key, allowed_providers=["fake", "helpdesk"])
    expires_at = datetime.fromisoformat(created["expires_at"].replace("Z", "+00:00"))
    assert timedelta(seconds=1800 - 30) <= expires_at - before <= timedelta(seconds=1800 + 30)
    browser = Browser(created["connect_url"])
    pages = [browser.open(), browser.post(provider="helpdesk"), browser.post(provider="helpdesk", step="connect")]
    assert [page.status_code for page in pages] == [200, 200, 400]
    for page in pages:
        assert "<script" not in page.text.lower() and " on" + "click=" not in page.text.lower()
        assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'none' forbids scripts
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
