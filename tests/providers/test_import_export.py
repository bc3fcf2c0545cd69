"""`manage.py provider import FILE.toml` / `export [NAME]`: an operator adds or shares a
provider template without a release. An imported template passes the built-in catalog's
lint (spec.entry_problems) and type checks; a bad file is one CommandError line and
nothing is written."""

from __future__ import annotations

import io
import tomllib

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from broker_app.models import Provider
from broker_app.providers import catalog_io
from broker_app.providers.registry import resolve
from broker_app.providers.spec import builtin_catalog, catalog, extra_catalog

GOOD = """
[acme_crm]
display_name = "Acme CRM"
docs_url = "https://developer.acme.example/oauth"
setup_url = "https://developer.acme.example/apps"
api_base_url = "https://{tenant}.api.acme.example"
account_id_field = "token.user.id"
offline_access = "scope:offline"
authorize_url = "https://{tenant}.acme.example/oauth/authorize"
token_url = "https://{tenant}.acme.example/oauth/token"
revocation_url = "https://{tenant}.acme.example/oauth/revoke"
pkce = "S256"
default_scopes = ["read", "offline"]
token_auth = "client_secret_basic"
refresh = true
refresh_token_rotation = true
error_aliases = { expired_refresh_token = "invalid_grant" }
params.tenant = { pattern = '^[a-z0-9][a-z0-9-]{0,62}$', example = "acme" }
"""


@pytest.fixture
def extra(settings, tmp_path):
    path = tmp_path / "var" / "providers.toml"
    settings.PROVIDER_CATALOG_EXTRA = str(path)
    return path


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("provider", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def write(tmp_path, text: str, name: str = "in.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.django_db
def test_an_imported_template_is_usable_listed_and_exported_back(extra, tmp_path):
    out = run("import", write(tmp_path, GOOD))
    assert out.startswith("imported 1 template(s): acme_crm")
    assert "acme_crm" in catalog() and "acme_crm" not in builtin_catalog()
    assert "acme_crm\tAcme CRM\timported" in run("templates")

    run("upsert", "--name", "acme", "--template", "acme_crm", "--client-id", "cid", "--client-secret", "sec")
    spec, _hooks = resolve(Provider.objects.get(name="acme"), {"tenant": "eu1"})
    assert spec.token_url == "https://eu1.acme.example/oauth/token"
    assert spec.api_base_url == "https://eu1.api.acme.example"
    assert spec.account_id_field == "token.user.id" and spec.refresh_token_rotation is True

    exported = run("export", "acme_crm")
    assert tomllib.loads(exported) == tomllib.loads(GOOD)
    assert tomllib.loads(run("export")) == tomllib.loads(GOOD)  # no name: every imported template
    # Re-importing the export (after an edit) replaces the template in place.
    run("import", write(tmp_path, exported.replace('"Acme CRM"', '"Acme CRM v2"'), "again.toml"))
    assert catalog()["acme_crm"]["display_name"] == "Acme CRM v2" and len(extra_catalog()) == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("[acme_crm\n", "not valid TOML"),
        ("", "holds no provider table"),
        ('name = "x"\n', "is not a table"),
        (GOOD.replace("pkce =", "pkse ="), "unknown key 'pkse'"),
        (
            GOOD.replace("https://{tenant}.acme.example/oauth/token", "http://{tenant}.acme.example/oauth/token"),
            "not an https URL",
        ),
        (GOOD.replace("pattern = '^[a-z0-9][a-z0-9-]{0,62}$'", "pattern = '[a-z]+'"), "must be anchored"),
        (GOOD.replace('default_scopes = ["read", "offline"]', 'default_scopes = "read offline"'), "wrong type"),
        (GOOD.replace("refresh = true", 'refresh = "yes"'), "wrong type"),
        (GOOD.replace('api_base_url = "https://{tenant}.api.acme.example"\n', ""), "api_base_url is missing"),
        (
            GOOD.replace('account_id_field = "token.user.id"', 'account_id_field = "cookie.id"'),
            "account_id_field must be",
        ),
        (
            GOOD.replace('offline_access = "scope:offline"', 'offline_access = "scope:offline_access"'),
            "default_scopes lacks",
        ),
        (GOOD.replace("{tenant}.acme.example/oauth/authorize", "{region}.acme.example/oauth/authorize"), "{region}"),
        (GOOD.replace("[acme_crm]", "[google]"), "is a built-in template"),
        (GOOD.replace("[acme_crm]", '["Acme CRM"]'), "a template key is"),
        (GOOD + GOOD.replace("[acme_crm]", "[acme_two]").replace("pkce =", "pkse ="), "acme_two: unknown key"),
    ],
)
@pytest.mark.django_db
def test_a_bad_file_is_one_line_and_writes_nothing(extra, tmp_path, text, message):
    before = run("templates")
    with pytest.raises(CommandError) as caught:
        run("import", write(tmp_path, text))
    assert str(caught.value).startswith("nothing imported: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not extra.exists() and run("templates") == before


@pytest.mark.django_db
def test_a_bad_file_leaves_earlier_imports_as_they_were(extra, tmp_path):
    run("import", write(tmp_path, GOOD))
    written = extra.read_bytes()
    with pytest.raises(CommandError, match="unknown key"):
        run("import", write(tmp_path, GOOD.replace("pkce =", "pkse ="), "bad.toml"))
    assert extra.read_bytes() == written and sorted(p.name for p in extra.parent.iterdir()) == ["providers.toml"]


@pytest.mark.django_db
def test_check_validates_without_writing(extra, tmp_path):
    assert run("import", "--check", write(tmp_path, GOOD)).endswith("1 template(s) valid: acme_crm\n")
    assert not extra.exists()
    with pytest.raises(CommandError, match="nothing imported: acme_crm: unknown key"):
        run("import", "--check", write(tmp_path, GOOD.replace("pkce =", "pkse ="), "bad.toml"))


@pytest.mark.django_db
def test_without_a_configured_file_nothing_is_imported(settings, tmp_path, monkeypatch):
    settings.PROVIDER_CATALOG_EXTRA = None
    monkeypatch.delenv("PROVIDER_CATALOG_EXTRA", raising=False)
    with pytest.raises(CommandError, match="PROVIDER_CATALOG_EXTRA is not set"):
        run("import", write(tmp_path, GOOD))
    with pytest.raises(CommandError, match="cannot read"):
        settings.PROVIDER_CATALOG_EXTRA = str(tmp_path / "x.toml")
        run("import", str(tmp_path / "missing.toml"))


@pytest.mark.django_db
def test_export_of_a_builtin_template_is_refused_back_unless_renamed(extra, tmp_path):
    exported = run("export", "zendesk")
    assert tomllib.loads(exported) == {"zendesk": builtin_catalog()["zendesk"]}
    with pytest.raises(CommandError, match="zendesk: is a built-in template"):
        run("import", write(tmp_path, exported))
    run("import", write(tmp_path, exported.replace("[zendesk]", "[zendesk_eu]"), "renamed.toml"))
    assert catalog()["zendesk_eu"]["token_url"] == builtin_catalog()["zendesk"]["token_url"]
    with pytest.raises(CommandError, match="unknown template 'nope'"):
        run("export", "nope")


@pytest.mark.django_db
def test_export_without_imports_says_so(extra):
    with pytest.raises(CommandError, match="no imported templates"):
        run("export")


def test_a_hand_edited_file_never_shadows_a_builtin_template(extra):
    extra.parent.mkdir(parents=True)
    extra.write_text('[google]\ndisplay_name = "Evil"\ntoken_url = "https://evil.example/token"\n')
    assert catalog()["google"] == builtin_catalog()["google"]
    extra.write_text("[broken\n")
    assert catalog() == builtin_catalog()  # unreadable: ignored (and logged)


def test_the_writer_round_trips_the_whole_builtin_catalog():
    text = catalog_io.dumps(builtin_catalog())
    assert tomllib.loads(text) == builtin_catalog()
    assert all(catalog_io._type_problems(key, entry) == [] for key, entry in builtin_catalog().items())
