"""/v1/proxy/{connection_id}/{path}: the call reaches the provider's API with the connection's
token, the agent never sees it, and the answer is the provider's (issue 15)."""

from __future__ import annotations

import http.client
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests
from fake_provider import api_cut_short, api_hang, api_large, api_raw, api_status

from broker_app.models import AuditEvent, Connection
from gateway_app import proxy_audit
from gateway_app.models import ProxyCall
from tests.conftest import start_connection

pytestmark = pytest.mark.django_db(transaction=True)


def raw_request(stack, method: str, target: str, key: str, headers: dict | None = None, body: bytes = b""):
    """A request line exactly as written (requests and urllib3 normalise `..` away)."""
    parts = urlsplit(stack.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
    conn.putheader("Authorization", f"Bearer {key}")
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body or None)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def audit_rows(cid: str, count: int = 1) -> list[ProxyCall]:
    """The call's audit rows: written when the streamed answer ends, which may be a moment
    after the agent read its last byte."""
    deadline = time.monotonic() + 5
    while ProxyCall.objects.filter(connection_id=cid).count() < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(ProxyCall.objects.filter(connection_id=cid).order_by("id"))


def test_get_reaches_the_api_with_the_token_the_agent_never_saw(proxied, fake_provider):
    stack, key, cid = proxied
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me?fields=a,b&x=%20y", key)
    assert response.status_code == 200, response.text
    assert response.json() == {"method": "GET", "path": "/api/users/me", "query": "fields=a,b&x=%20y", "received": 0}
    assert response.headers["Dromos-Connection-Id"] == cid
    [call] = fake_provider.api_calls
    assert call["token_valid"] is True
    token = call["headers"]["authorization"].removeprefix("Bearer ")
    assert token in fake_provider.valid_access_tokens
    assert token not in response.text and token not in str(response.headers)


def test_every_call_is_audited_without_query_body_or_headers(proxied, fake_provider):
    stack, key, cid = proxied
    response = stack.call("POST", f"/v1/proxy/{cid}/items?secret_q=1", key, data=b"hello body")
    assert response.status_code == 200
    [row] = audit_rows(cid)
    assert (row.method, row.host, row.path, row.status, row.provider) == ("POST", "127.0.0.1", "/items", 200, "fake")
    assert row.workspace == "ws-a" and row.key_prefix == key.split("_")[1]
    assert row.bytes_sent == 10 and row.bytes_received == len(response.content) and row.attempts == 1
    # The credential came from the broker as an audited token read by the proxy.
    read = AuditEvent.objects.filter(connection_id=cid, action="token.read").latest("id")
    assert read.actor == f"proxy:apikey:{key.split('_')[1]}" and read.detail == {"via": "proxy"}


def test_request_headers_are_filtered_and_the_body_forwarded(proxied, fake_provider):
    stack, key, cid = proxied
    response = stack.call(
        "PUT",
        f"/v1/proxy/{cid}/things/1",
        key,
        data=b'{"a": 1}',
        headers={
            "Content-Type": "application/json",
            "X-Custom": "kept",
            "Cookie": "session=agent-cookie",
            "X-Forwarded-For": "10.1.2.3",
            "Proxy-Authorization": "Basic abc",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "dropped",
            "Dromos-Proxy-Retry": "true",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["received"] == 8
    headers = fake_provider.api_calls[0]["headers"]
    assert headers["content-type"] == "application/json" and headers["x-custom"] == "kept"
    for dropped in ("cookie", "x-forwarded-for", "proxy-authorization", "x-hop", "dromos-proxy-retry"):
        assert dropped not in headers
    assert key not in str(headers)  # the agent's own Authorization (its API key) never leaves
    assert headers["authorization"].startswith("Bearer at-")
    assert headers["host"] == urlsplit(fake_provider.url).netloc


def test_response_headers_are_filtered_and_an_echoed_token_masked(proxied, fake_provider):
    stack, key, cid = proxied
    assert stack.call("GET", f"/v1/proxy/{cid}/warm", key).status_code == 200
    token = fake_provider.api_calls[0]["headers"]["authorization"].removeprefix("Bearer ")

    def echo(handler) -> bool:
        body = f'{{"you_sent": "{token}"}}'.encode()
        return api_raw(
            200,
            body,
            {"Content-Type": "application/json", "Set-Cookie": "p=1", "X-RateLimit-Remaining": "42", "X-Echo": token},
        )(handler)

    fake_provider.api_answer(echo)
    response = stack.call("GET", f"/v1/proxy/{cid}/echo", key)
    assert response.status_code == 200
    assert token not in response.text and token not in str(response.headers)
    assert response.json() == {"you_sent": "*" * len(token)}
    assert response.headers["X-RateLimit-Remaining"] == "42"
    assert "Set-Cookie" not in response.headers and "X-Echo" not in response.headers


def test_unknown_and_other_workspace_connections_are_404(proxied, fake_provider):
    stack, key, cid = proxied
    other = stack.key(workspace="ws-b")
    assert stack.call("GET", f"/v1/proxy/{cid}/users/me", other).status_code == 404
    assert stack.call("GET", "/v1/proxy/c_nope/users/me", key).status_code == 404
    # Cached in ws-a's entry, never served to ws-b.
    assert stack.call("GET", f"/v1/proxy/{cid}/users/me", key).status_code == 200
    answer = stack.call("GET", f"/v1/proxy/{cid}/users/me", other)
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"
    assert len(fake_provider.api_calls) == 1


@pytest.mark.parametrize("status", ["pending", "failed", "revoked"])
def test_connection_not_active_is_409(stack, fake_provider, api_provider, status):
    key = stack.key()
    cid = start_connection(stack, key)["connection_id"]
    if status != "pending":
        Connection.objects.filter(pk=cid).update(status=status)
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert response.status_code == 409 and response.json()["error"] == "connection_not_active"
    assert response.json()["status"] == status
    assert fake_provider.api_calls == []


def test_a_provider_without_api_base_url_is_409(proxied, fake_provider, api_provider):
    stack, key, cid = proxied
    api_provider.api_base_url = ""
    api_provider.save()
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert response.status_code == 409 and response.json()["error"] == "proxy_not_configured"


def test_the_provider_list_shows_the_api_base_url(proxied, fake_provider):
    stack, key, _ = proxied
    [provider] = stack.call("GET", "/v1/providers", key).json()["providers"]
    assert provider["api_base_url"] == f"{fake_provider.url}/api"


BAD_PATHS = [
    "//evil.example/x",
    "/%2F%2Fevil.example/x",
    "/%2f/evil.example",
    "/@evil.example/x",
    "/%40evil.example/x",
    "/../x",
    "/a/../../x",
    "/a/%2e%2e/b",
    "/a/%2E%2E%2Fb",
    "/a/%252e%252e/b",
    "/./x",
    "/https://evil.example/",
    "/https:%2F%2Fevil.example",
    "/http:evil.example",
    "/a%0d%0aHost:%20evil.example",
    "/a%0aX:y",
    "/a%00b",
    "/a%5Cb",
    "/a\\b",
    "/a%5c..%5cb",
]


@pytest.mark.parametrize("bad", BAD_PATHS)
def test_host_changing_paths_are_400_with_no_connection_made(proxied, fake_provider, bad):
    stack, key, cid = proxied
    proxy_audit.audit_flush()
    before = ProxyCall.objects.count()
    status, body = raw_request(stack, "GET", f"/v1/proxy/{cid}{bad}", key)
    assert status == 400, body
    assert b'"invalid_proxy_path"' in body
    assert fake_provider.api_calls == []
    assert proxy_audit.audit_flush()
    assert ProxyCall.objects.count() == before + 1


def test_an_absolute_url_as_path_never_leaves_the_provider_host(proxied, fake_provider):
    stack, key, cid = proxied
    status, body = raw_request(stack, "GET", f"/v1/proxy/{cid}/http://127.0.0.1:1/x", key)
    assert status == 400 and fake_provider.api_calls == []


def test_at_sign_later_in_the_path_stays_on_the_provider_host(proxied, fake_provider):
    stack, key, cid = proxied
    response = stack.call("GET", f"/v1/proxy/{cid}/users/someone@example.com/messages", key)
    assert response.status_code == 200
    assert fake_provider.api_calls[0]["path"] == "/api/users/someone@example.com/messages"


def test_unknown_proxy_option_headers_and_bad_values_are_400(proxied, fake_provider):
    stack, key, cid = proxied
    for headers in (
        {"Dromos-Proxy-Retrys": "2"},
        {"Dromos-Proxy-Retries": "many"},
        {"Dromos-Proxy-Retries": "99"},
        {"Dromos-Proxy-Retry": "yes"},
        {"Dromos-Proxy-Host": "evil.example"},
    ):
        response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key, headers=headers)
        assert response.status_code == 400, headers
    assert fake_provider.api_calls == []


def test_a_body_over_the_limit_is_413_from_its_declared_length_before_it_is_sent(proxied, fake_provider, settings):
    stack, key, cid = proxied
    settings.PROXY_MAX_BODY_BYTES = 1000
    parts = urlsplit(stack.url)
    # Declare 50 MB and send none of it: the answer must not wait for the body.
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(
            (
                f"POST /v1/proxy/{cid}/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                "Content-Type: application/octet-stream\r\nContent-Length: 50000000\r\n\r\n"
            ).encode()
        )
        started = time.monotonic()
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"request_too_large"' in answer or b"413" in answer
    assert time.monotonic() - started < 3
    response = stack.call("POST", f"/v1/proxy/{cid}/upload", key, data=b"x" * 1001)
    assert response.status_code == 413 and response.json()["error"] == "request_too_large"
    assert stack.call("POST", f"/v1/proxy/{cid}/upload", key, data=b"x" * 1000).status_code == 200
    assert len(fake_provider.api_calls) == 1


def test_a_provider_that_hangs_is_504_within_the_timeout(proxied, fake_provider, settings):
    stack, key, cid = proxied
    settings.PROXY_READ_TIMEOUT = 0.5
    fake_provider.api_answer(api_hang(3))
    started = time.monotonic()
    response = stack.call("GET", f"/v1/proxy/{cid}/slow", key)
    assert response.status_code == 504 and response.json()["error"] == "provider_timeout"
    assert time.monotonic() - started < 2.5
    [row] = audit_rows(cid)
    assert row.status == 504


def test_an_unreachable_provider_is_502(proxied, fake_provider, api_provider):
    stack, key, cid = proxied
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api_provider.api_base_url = f"http://127.0.0.1:{port}/api"
    api_provider.save()
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert response.status_code == 502 and response.json()["error"] == "provider_unreachable"


def test_a_provider_that_closes_mid_body_breaks_the_answer(proxied, fake_provider):
    stack, key, cid = proxied
    fake_provider.api_answer(api_cut_short(declared=200_000, sent=5000))
    response = requests.get(
        f"{stack.url}/v1/proxy/{cid}/download", headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=10
    )
    assert response.status_code == 200 and response.headers["Content-Length"] == "200000"
    with pytest.raises(requests.exceptions.RequestException):
        response.content  # noqa: B018  (reading it is the test)
    [row] = audit_rows(cid)
    assert (row.status, row.error) == (502, "upstream_broken")


def test_redirects_are_not_followed(proxied, fake_provider):
    stack, key, cid = proxied
    fake_provider.api_answer(api_raw(302, b"", {"Location": "http://169.254.169.254/latest/meta-data/"}))
    response = stack.call("GET", f"/v1/proxy/{cid}/moved", key)
    assert response.status_code == 302
    assert response.headers["Location"] == "http://169.254.169.254/latest/meta-data/"
    assert len(fake_provider.api_calls) == 1


def test_429_and_retry_after_pass_through_and_are_counted(proxied, fake_provider):
    stack, key, cid = proxied
    fake_provider.api_answer(api_status(429, {"error": "slow down"}, {"Retry-After": "30"}))
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert response.status_code == 429 and response.headers["Retry-After"] == "30"
    assert response.json() == {"error": "slow down"}
    audit_rows(cid)  # counted when the answer has been relayed
    metrics = stack.broker("GET", "/metrics").text
    assert 'dromos_proxy_rate_limited_total{provider="fake"}' in metrics
    assert 'dromos_proxy_requests_total{method="GET",provider="fake",status="429"}' in metrics
    assert cid not in metrics


def test_proxy_retries_honour_retry_after_up_to_the_cap(proxied, fake_provider, settings):
    stack, key, cid = proxied
    fake_provider.api_answer(api_status(503, {}, {"Retry-After": "1"}), api_status(429, {}, {"Retry-After": "0"}))
    started = time.monotonic()
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key, headers={"Dromos-Proxy-Retries": "2"})
    assert response.status_code == 200 and len(fake_provider.api_calls) == 3
    assert time.monotonic() - started >= 1
    assert audit_rows(cid)[0].attempts == 3
    # A Retry-After beyond PROXY_MAX_RETRY_WAIT_SECONDS goes back to the agent at once.
    settings.PROXY_MAX_RETRY_WAIT_SECONDS = 2
    fake_provider.api_answer(api_status(429, {}, {"Retry-After": "60"}))
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key, headers={"Dromos-Proxy-Retries": "2"})
    assert response.status_code == 429 and response.headers["Retry-After"] == "60"
    # 5xx of a POST is not retried unless the agent says the call may be repeated.
    calls = len(fake_provider.api_calls)
    fake_provider.api_answer(api_status(500))
    response = stack.call("POST", f"/v1/proxy/{cid}/items", key, data=b"x", headers={"Dromos-Proxy-Retries": "2"})
    assert response.status_code == 500 and len(fake_provider.api_calls) == calls + 1


def test_revocation_reaches_the_proxy_within_the_cache_bound(proxied, fake_provider, settings):
    stack, key, cid = proxied
    settings.PROXY_TOKEN_CACHE_SECONDS = 1
    assert stack.call("GET", f"/v1/proxy/{cid}/users/me", key).status_code == 200
    # Revoked behind this gateway's back (the broker's own API: another gateway process, the admin).
    revoked = stack.broker("DELETE", f"/internal/v1/connections/{cid}", headers={"X-Dromos-Workspace": "ws-a"})
    assert revoked.status_code == 200
    time.sleep(1.1)
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert response.status_code == 409 and response.json()["status"] == "revoked"


def test_delete_through_the_gateway_takes_effect_at_once(proxied, fake_provider, settings):
    stack, key, cid = proxied
    settings.PROXY_TOKEN_CACHE_SECONDS = 300
    assert stack.call("GET", f"/v1/proxy/{cid}/users/me", key).status_code == 200
    assert stack.call("DELETE", f"/v1/connections/{cid}", key).status_code == 200
    assert stack.call("GET", f"/v1/proxy/{cid}/users/me", key).status_code == 409
    assert len(fake_provider.api_calls) == 1


def test_a_key_without_the_proxy_scope_is_403(proxied, fake_provider):
    stack, _, cid = proxied
    narrow = stack.key(scopes=["tokens:read"])
    response = stack.call("GET", f"/v1/proxy/{cid}/users/me", narrow)
    assert response.status_code == 403 and fake_provider.api_calls == []


def test_a_large_download_streams_through_without_sitting_in_memory(proxied, fake_provider):
    import tracemalloc

    stack, key, cid = proxied
    fake_provider.api_answer(api_large(64))
    tracemalloc.start()
    try:
        response = requests.get(
            f"{stack.url}/v1/proxy/{cid}/download", headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=60
        )
        assert response.headers["Content-Length"] == str(64 * 1024 * 1024)
        received = sum(len(chunk) for chunk in response.iter_content(64 * 1024))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert received == 64 * 1024 * 1024
    # Gateway, fake provider and this client share the process: all of them together held
    # a few MiB at most while 64 MiB went through.
    assert peak < 8 * 1024 * 1024, peak


def test_a_key_whose_slow_call_slots_are_taken_gets_429_before_any_provider_call(proxied, fake_provider, settings):
    """The proxied call waits on a provider, so it holds one of the gateway's bulkhead slots
    (GATEWAY_SLOW_CALLS_PER_KEY) like POST /v1/refresh; with none free it answers 429."""
    from types import SimpleNamespace

    from gateway_app.bulkhead import slow_call_slot
    from gateway_app.models import ApiKey

    stack, key, cid = proxied
    settings.GATEWAY_SLOW_CALLS_PER_KEY = 1
    api_key = ApiKey.objects.get(prefix=key[3:11])  # dk_<prefix>_<secret>
    before = len(fake_provider.api_calls)
    with slow_call_slot(SimpleNamespace(prefix=api_key.prefix, workspace=api_key.workspace)):
        refused = stack.call("GET", f"/v1/proxy/{cid}/users/me", key)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "concurrency_limited" and refused.headers["Retry-After"] == "1"
    assert len(fake_provider.api_calls) == before
    assert stack.call("GET", f"/v1/proxy/{cid}/users/me", key).status_code == 200


def test_expired_credentials_leave_the_cache_within_its_lifetime(settings, monkeypatch):
    """The process's credential cache holds plaintext tokens: an expired one is dropped at
    the next store after one cache lifetime, not kept until 10,000 have piled up."""
    from gateway_app import proxy

    settings.PROXY_TOKEN_CACHE_SECONDS = 5
    clock = [1000.0]
    monkeypatch.setattr(proxy.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(proxy, "_next_sweep", 0.0)  # set by earlier tests on the real clock

    def credential(cid: str) -> proxy.Credential:
        return proxy.Credential(cid, "fake", 1, f"tok_{cid}", None, "https://api.example.test", (), "Authorization", "")

    for n in range(50):
        proxy._remember("ws-a/production", credential(f"c_{n}"))
    assert len(proxy._credentials) == 50  # all live
    clock[0] += 5.5  # every one expired
    proxy._remember("ws-a/production", credential("c_new"))
    assert list(proxy._credentials) == [("ws-a/production", "c_new")]
    assert not any(c.access_token == "tok_c_3" for _, c in proxy._credentials.values())
    clock[0] += 1  # within the lifetime: no second pass, nothing expired either
    proxy._remember("ws-b/production", credential("c_other"))
    assert len(proxy._credentials) == 2
