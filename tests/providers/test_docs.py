"""docs/providers.md stays true: every template has a section, and every
`provider upsert` example in it works."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from broker_app.models import Provider
from broker_app.oauth import assertions
from broker_app.providers import catalog_docs
from broker_app.providers.registry import resolve, resolve_machine, resolve_static
from broker_app.providers.spec import catalog, missing_params, resolve_values, template

DOC = Path(__file__).resolve().parents[2] / "docs" / "providers.md"


def _new_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def examples() -> list[list[str]]:
    text = DOC.read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("python manage.py provider upsert"):
                commands.append(shlex.split(line.replace("…", "x"))[2:])
    return commands


def test_every_template_has_a_section():
    headings = re.findall(r"^### .*$", DOC.read_text(), flags=re.M)
    keys = {key for heading in headings for key in re.findall(r"`([a-z0-9_]+)`", heading)}
    assert keys == set(catalog())


@pytest.mark.django_db
def test_every_upsert_example_works(tmp_path):
    commands = examples()
    assert len(commands) >= len(catalog())
    key_file = tmp_path / "app-key.pem"  # the app private key an example names (issue 18)
    key_file.write_text(assertions.normalised_pem(_new_pem()))
    for args in commands:
        if "--discovery-url" in args:
            args = [*args, "--no-check"]  # its discovery URL is an example host
        if "--private-key-file" in args:
            args = [*args]
            args[args.index("--private-key-file") + 1] = str(key_file)
        out = io.StringIO()
        call_command(*args, stdout=out, stderr=io.StringIO())
        name = args[args.index("--name") + 1]
        assert out.getvalue().startswith(("created provider", "updated provider")), args
        provider = Provider.objects.get(name=name)
        entry = template(provider.template)
        if "--discovery-url" not in args and not missing_params(
            entry, resolve_values(entry, fixed=provider.settings, given={})
        ):
            # usable as configured, without per-connection parameters
            if entry.get("auth_mode", "oauth2") == "oauth2":
                resolve(provider)
            elif entry["auth_mode"] == "app":
                resolve_machine(provider)
                assert provider.private_key_enc, args
            else:
                resolve_static(provider)


# -- the generated parts (broker_app/providers/catalog_docs.py) -------------------------------


def test_generated_table_and_sections_are_what_the_catalog_renders():
    """Run `python manage.py provider docs` after changing catalog.toml."""
    text = DOC.read_text()
    assert catalog_docs.render(text) == text


def test_the_table_lists_every_template_and_at_least_100_oauth_providers():
    text = DOC.read_text()
    table = text.split(catalog_docs.TABLE_BEGIN)[1].split(catalog_docs.TABLE_END)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    keys = [re.match(r"\| `([a-z0-9_]+)`", row).group(1) for row in rows]
    assert keys == sorted(catalog())
    # `oidc` is a template for any provider, not a provider; the rest each name one.
    assert len([key for key in keys if key != "oidc"]) >= 100
    by_key = dict(zip(keys, rows, strict=True))
    assert "| no | yes (DELETE) |" in by_key["github"]  # no refresh; revocation by DELETE
    assert "`tenant`" in by_key["microsoft"] and "operator: `host`" in by_key["keycloak"]
    assert "| required |" in by_key["airtable"] and "[docs](https://" in by_key["airtable"]
    assert "OAuth 2.0 + OIDC" in by_key["okta"] and "scope `offline.access`" in by_key["x"]


def test_docs_command_check_fails_on_a_stale_file_and_rewrites_it(tmp_path):
    stale = tmp_path / "providers.md"
    text = DOC.read_text()
    stale.write_text(text.replace("| `github` |", "| `gone` |"))
    with pytest.raises(CommandError, match="out of date"):
        call_command("provider", "docs", "--check", "--file", str(stale), stdout=io.StringIO())
    assert "| `gone` |" in stale.read_text()  # --check writes nothing
    out = io.StringIO()
    call_command("provider", "docs", "--file", str(stale), stdout=out)
    assert out.getvalue().startswith("rewrote") and stale.read_text() == text
    broken = tmp_path / "broken.md"
    broken.write_text("# Providers\n")
    with pytest.raises(CommandError, match="lacks the markers"):
        call_command("provider", "docs", "--file", str(broken), stdout=io.StringIO())


def test_a_handwritten_section_replaces_the_generated_one():
    text = DOC.read_text()
    assert "### Google Drive (`google_drive`)" in text
    handwritten = text.replace("## More providers", "### Drive, by hand (`google_drive`)\n\n## More providers")
    rendered = catalog_docs.render(handwritten)
    generated = rendered.split(catalog_docs.SECTIONS_BEGIN)[1]
    assert "(`google_drive`)" not in generated and "(`gmail`)" in generated
