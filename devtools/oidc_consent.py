"""Drive the local oidc-provider's login + consent pages like a browser would.

Library use::

    from oidc_consent import complete_consent
    final_url = complete_consent(auth_url, login="alice",
                                 stop_at_prefix="http://127.0.0.1:8001/auth/callback")

CLI use::

    python devtools/oidc_consent.py AUTH_URL [--login alice] [--deny] [--stop-at PREFIX]

Starting at AUTH_URL, every redirect is followed by hand (one requests.Session,
so the provider's cookies are kept): the devInteractions login form is
submitted with the login name (any password), the consent form is submitted
(or its "[ Cancel ]" link followed with --deny, which makes the provider answer
the client with error=access_denied), and the redirects go on through the
client's redirect_uri (e.g. a broker callback) to wherever they end.

It stops, and returns that URL, at the first of:

* a redirect whose target starts with ``stop_at_prefix`` (not fetched);
* a redirect to a host that refuses connections (e.g. a fake app return_url);
* a page that answers 2xx and is not a login/consent page.

Any answer of 400 or more (e.g. the provider's "oops! something went wrong"
error page) raises ConsentError; the CLI then exits 1.

Only the standard library and ``requests`` are used.
"""

from __future__ import annotations

import argparse
import re
import sys
from html.parser import HTMLParser
from urllib.parse import urljoin

import requests

__all__ = ["ConsentError", "complete_consent", "confirm_device_code", "main"]

MAX_STEPS = 40


class ConsentError(RuntimeError):
    """The flow did not get through: an error page, a loop or an unknown page."""

    def __init__(self, message: str, url: str | None = None, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.url = url
        self.status = status
        self.body = body


class _PageParser(HTMLParser):
    """Collects forms (action, method, named inputs), links and visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self._form: dict | None = None
        self._skip = 0  # inside <style>/<script>

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self._form = {"action": a.get("action", ""), "method": a.get("method", "get").lower(), "fields": {}}
            self.forms.append(self._form)
        elif tag in ("input", "button", "select", "textarea") and self._form is not None:
            name = a.get("name")
            if name and not (
                tag == "input" and a.get("type", "").lower() in ("checkbox", "radio") and "checked" not in a
            ):
                self._form["fields"].setdefault(name, a.get("value", ""))
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag in ("style", "script"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag in ("style", "script") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.text.append(data.strip())


def _parse(html: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser


def _page_summary(html: str, limit: int = 600) -> str:
    text = " ".join(_parse(html).text)
    text = re.sub(r"\s+", " ", text)
    return text[:limit]


def complete_consent(
    auth_url: str,
    login: str = "alice",
    deny: bool = False,
    stop_at_prefix: str | None = None,
    *,
    password: str = "any-password",  # noqa: S107 - dev provider accepts any
    session: requests.Session | None = None,
    timeout: float = 10.0,
) -> str:
    """Go through login and consent starting at ``auth_url``; return the final URL reached.

    ``deny=True`` cancels at the consent page (the client then gets
    ``error=access_denied``). See the module docstring for where it stops.
    """
    http = session or requests.Session()
    if session is None:
        http.trust_env = False  # never route 127.0.0.1 through an environment proxy
    url = auth_url
    method, data = "GET", None
    first = True
    seen_consent = False

    for _ in range(MAX_STEPS):
        try:
            resp = http.request(method, url, data=data, allow_redirects=False, timeout=timeout)
        except requests.ConnectionError as exc:
            if first:
                raise ConsentError(f"cannot reach {url}: {exc}", url=url) from exc
            return url  # a redirect to a host that does not answer: the end of the road
        first = False
        method, data = "GET", None

        if resp.is_redirect or (300 <= resp.status_code < 400 and "location" in resp.headers):
            target = urljoin(url, resp.headers["location"])
            if stop_at_prefix and target.startswith(stop_at_prefix):
                return target
            url = target
            continue

        body = resp.text if "html" in resp.headers.get("content-type", "") else resp.text[:2000]
        if resp.status_code >= 400:
            raise ConsentError(
                f"{resp.status_code} from {url}: {_page_summary(body) or body[:600]}",
                url=url,
                status=resp.status_code,
                body=body,
            )

        page = _parse(body) if "<form" in body or "<a" in body else None
        form = None
        if page is not None:
            for candidate in page.forms:
                if candidate["fields"].get("prompt") in ("login", "consent"):
                    form = candidate
                    break

        if form is None:
            return url  # a 2xx page that is not an interaction page: we have arrived

        action = urljoin(url, form["action"] or url)
        prompt = form["fields"]["prompt"]
        if prompt == "login":
            fields = dict(form["fields"])
            fields["login"] = login
            fields["password"] = password
            method, data, url = "POST", fields, action
        else:  # consent
            if seen_consent:
                raise ConsentError(f"consent page shown twice at {url}", url=url, body=body)
            seen_consent = True
            if deny:
                abort = next((h for h in page.links if h.rstrip("/").endswith("/abort")), None)
                if abort is None:
                    raise ConsentError(f"no cancel/abort link on the consent page {url}", url=url, body=body)
                url = urljoin(url, abort)
            else:
                method, data, url = "POST", dict(form["fields"]), action

    raise ConsentError(f"gave up after {MAX_STEPS} steps, last at {url}", url=url)


def _form(http: requests.Session, method: str, url: str, form_id: str, timeout: float, data=None):
    resp = http.request(method, url, data=data, allow_redirects=False, timeout=timeout)
    if resp.status_code >= 400:
        raise ConsentError(
            f"{resp.status_code} from {url}: {_page_summary(resp.text)}", url=url, status=resp.status_code
        )
    match = re.search(r'<form id="' + re.escape(form_id) + r'"[^>]*action="([^"]*)"', resp.text)
    if match is None:
        raise ConsentError(f"no form {form_id} at {url}: {_page_summary(resp.text)}", url=url, body=resp.text)
    page = _parse(resp.text)
    fields = next(f["fields"] for f in page.forms if f["action"] == match.group(1))
    return urljoin(url, match.group(1)), dict(fields)


def confirm_device_code(
    verification_uri: str,
    user_code: str,
    login: str = "alice",
    deny: bool = False,
    *,
    timeout: float = 10.0,
) -> str:
    """RFC 8628 at the local oidc-provider, like a person on a phone: open
    ``verification_uri``, type ``user_code``, confirm it (or abort with ``deny``), then log
    in and consent. Returns the URL of the page reached (the provider's success page)."""
    http = requests.Session()
    http.trust_env = False
    action, fields = _form(http, "GET", verification_uri, "op.deviceInputForm", timeout)
    fields["user_code"] = user_code
    action, fields = _form(http, "POST", action, "op.deviceConfirmForm", timeout, data=fields)
    if deny:
        fields.pop("confirm", None)
        fields["abort"] = "yes"
    resp = http.post(action, data=fields, allow_redirects=False, timeout=timeout)
    if resp.status_code >= 400:
        raise ConsentError(f"{resp.status_code} from {action}: {_page_summary(resp.text)}", url=action)
    if not resp.is_redirect:
        return action  # aborted: the provider shows its result page
    return complete_consent(urljoin(action, resp.headers["location"]), login=login, session=http, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Log in and consent (or cancel) at the local oidc-provider; print the final URL."
    )
    parser.add_argument("auth_url", help="authorization URL (the provider's /auth?..., or a URL redirecting there)")
    parser.add_argument("--login", default="alice", help="login name typed on the login page; becomes the sub")
    parser.add_argument("--deny", action="store_true", help="cancel at the consent page (error=access_denied)")
    parser.add_argument(
        "--stop-at",
        dest="stop_at_prefix",
        default=None,
        help="stop, without fetching it, at the first redirect starting with this prefix",
    )
    args = parser.parse_args(argv)
    try:
        final = complete_consent(args.auth_url, login=args.login, deny=args.deny, stop_at_prefix=args.stop_at_prefix)
    except ConsentError as exc:
        print(f"oidc_consent: {exc}", file=sys.stderr)
        return 1
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
