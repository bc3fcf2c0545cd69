"""Every shell snippet the README and docs/*.md tell a reader to run, run as written.

A snippet is a ```sh block right after a `<!-- snippet: NAME -->` line. Each runs in bash,
from the repository root, against a stack started the way `make run` starts it, after the
`export …` line that `make run` printed (as the README says to paste it); the placeholders a
reader fills (the consent in the browser, the `c_…` id) are filled here the way a reader
would: the consent pages are walked by devtools/oidc_consent.py. Each snippet has a reader
below that checks what the text around it promises; a marked snippet without one fails."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from oidc_consent import complete_consent

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKED = re.compile(r"^<!-- snippet: ([\w-]+) -->\n```(?:sh|bash)\n(.*?)^```", re.M | re.S)


def snippets() -> dict[str, tuple[Path, str]]:
    found: dict[str, tuple[Path, str]] = {}
    for doc in DOCS:
        for name, block in MARKED.findall(doc.read_text()):
            assert name not in found, f"snippet {name!r} is marked twice"
            found[name] = (doc, block)
    return found


def shell(run_stack, script: str) -> subprocess.CompletedProcess:
    """The reader's shell: the export line make run printed, then the lines."""
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f"{run_stack.export_line}\n{script}"],
        cwd=ROOT,
        env=run_stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (
        f"exit {done.returncode}\n{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    return done


def json_documents(text: str) -> list[dict]:
    """The JSON bodies curl printed one after another (not necessarily newline-separated)."""
    decoder, documents, text, at = json.JSONDecoder(), [], text.strip(), 0
    while at < len(text):
        document, at = decoder.raw_decode(text, at)
        documents.append(document)
        while at < len(text) and text[at].isspace():
            at += 1
    return documents


def read_first_connection(run_stack, block: str) -> None:
    """request-connection → consent in the browser → check-connection, token."""
    before, consent, after = re.split(r"^(# open authUrl in a browser.*\n(?:#.*\n)*)", block, maxsplit=1, flags=re.M)
    (started,) = json_documents(shell(run_stack, before).stdout)
    assert {"authUrl", "state", "connection_id"} <= set(started), started
    return_url = re.search(r"lands on (\S+?)\?", consent).group(1)
    landed = complete_consent(started["authUrl"], login="me", stop_at_prefix=return_url)
    query = parse_qs(urlsplit(landed).query)
    assert landed.startswith(return_url) and query["status"] == ["success"], landed  # as the comment says
    cid = query["connection_id"][0]
    assert cid == started["connection_id"]
    assert "c_…" in after
    checked, token = json_documents(shell(run_stack, after.replace("c_…", cid)).stdout)
    assert checked["status"] == "active" and checked["connection_id"] == cid, checked
    assert "access_token" in token, token
    assert token["access_token"] and token["token_type"] == "Bearer" and token["connection_id"] == cid, token


def read_manage(run_stack, block: str) -> None:
    """`stack.py manage`: provider list, a new API key that works, another admin login that works."""
    out = shell(run_stack, block).stdout
    assert re.search(r"^local\toidc\tenabled", out, re.M), out
    (key,) = re.findall(r"^dk_\S+$", out, re.M)
    listing = requests.get(f"{run_stack.gateway_url}/v1/connections", headers={"Authorization": f"Bearer {key}"})
    assert listing.status_code == 200 and listing.json()["count"] == 0  # a new workspace, "me"
    user, password = re.search(r"DJANGO_SUPERUSER_PASSWORD='([^']+)'.*--username (\S+)", block, re.S).group(2, 1)
    assert admin_session(run_stack.admin_url, user, password).get(run_stack.admin_url).status_code == 200


def admin_session(admin_url: str, username: str, password: str) -> requests.Session:
    """Logged in through the admin's login form (as a browser does: cookie, CSRF token)."""
    http = requests.Session()
    login = http.get(admin_url + "login/", timeout=30)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
    done = http.post(
        admin_url + "login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": csrf, "next": "/admin/"},
        headers={"Referer": admin_url + "login/"},
        allow_redirects=False,
        timeout=30,
    )
    assert done.status_code == 302 and done.headers["Location"] == "/admin/", (done.status_code, done.text[:500])
    return http


READERS = {"first-connection": read_first_connection, "manage": read_manage}


def test_every_marked_snippet_has_a_reader():
    assert set(snippets()) == set(READERS)


def test_every_picture_in_the_readme_exists_and_every_picture_is_shown():
    readme = (ROOT / "README.md").read_text()
    pictures = re.findall(r"!\[([^\]]*)\]\((docs/img/[^)]+)\)", readme)
    shown = {path for _, path in pictures}
    assert shown and all((ROOT / path).is_file() for path in shown), shown
    # The operator's pictures (devtools/render_dashboards.py) are shown in docs/operations.md.
    operations = (ROOT / "docs" / "operations.md").read_text()
    drawn = {f"docs/{path}" for path in re.findall(r"!\[[^\]]+\]\((img/[^)]+)\)", operations)}
    assert drawn and all((ROOT / path).is_file() for path in drawn), drawn
    assert {str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "img").glob("*.png")} == shown | drawn
    # Each says what it shows (alt text of a few words), and each is one `make screenshots` makes.
    assert all(len(alt.split()) >= 3 for alt, _ in pictures), pictures
    from screenshots import SHOTS  # devtools/screenshots.py

    assert {f"docs/img/{shot.filename}" for shot in SHOTS.values()} == shown


@pytest.mark.snippets
@pytest.mark.parametrize("name", sorted(READERS))
def test_snippet_works_as_written(run_stack, name):
    doc, block = snippets()[name]
    READERS[name](run_stack, block)


@pytest.mark.snippets
def test_make_run_prints_the_admin_login_and_it_works(run_stack):
    assert run_stack.admin_url.endswith("/admin/") and run_stack.admin_user == "admin"
    assert len(run_stack.admin_password) >= 16
    http = admin_session(run_stack.admin_url, run_stack.admin_user, run_stack.admin_password)
    assert "Dromos broker" in http.get(run_stack.admin_url + "broker_app/connection/", timeout=30).text
