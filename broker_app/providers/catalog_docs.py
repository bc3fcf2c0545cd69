"""docs/providers.md's generated parts, rendered from the catalog: the table of every
template, and a section for each template the hand-written part does not describe.
`manage.py provider docs` rewrites them; `--check` (and tests/providers/test_docs.py) fails
when the checked-in file is not what the catalog renders."""

from __future__ import annotations

import re
from typing import Any

from broker_app.providers.spec import builtin_catalog, param_specs

TABLE_BEGIN = "<!-- catalog-table:begin (generated from catalog.toml by `manage.py provider docs`) -->"
TABLE_END = "<!-- catalog-table:end -->"
SECTIONS_BEGIN = "<!-- catalog-sections:begin (generated from catalog.toml by `manage.py provider docs`) -->"
SECTIONS_END = "<!-- catalog-sections:end -->"


class DocsLayoutError(Exception):
    """The document lacks the markers the generated parts go between."""


def _offline(entry: dict[str, Any]) -> str:
    rule = entry.get("offline_access", "")
    if rule.startswith("scope:"):
        return f"scope `{rule[6:]}`"
    if rule.startswith("param:"):
        return f"`{rule[6:]}`"
    return {"app_setting": "if enabled on the app", "always": "", "none": ""}.get(rule, "")


def refresh_cell(entry: dict[str, Any]) -> str:
    if not entry.get("refresh", True):
        return "no"
    how = _offline(entry)
    parts = [f"yes ({how})" if how else "yes"]
    if entry.get("refresh_token_rotation"):
        parts.append("rotating")
    if entry.get("refresh_token_lifetime_days"):
        parts.append(f"{entry['refresh_token_lifetime_days']} d")
    if entry.get("refresh_token_idle_days"):
        parts.append(f"{entry['refresh_token_idle_days']} d idle")
    return ", ".join(parts)


def revocation_cell(key: str, entry: dict[str, Any]) -> str:
    if key == "oidc":
        return "from discovery"
    if not entry.get("revocation_url"):
        return "—"
    method = entry.get("revocation_method", "POST")
    return "yes" if method == "POST" else f"yes ({method})"


def _static(entry: dict[str, Any]) -> bool:
    return entry.get("auth_mode", "oauth2") != "oauth2"


_GRANT_NAMES = {"client_credentials": "client credentials", "jwt_bearer": "JWT bearer", "github_app": "GitHub App"}


def _grants(entry: dict[str, Any]) -> str:
    return ", ".join(_GRANT_NAMES[g] for g in entry.get("grants", []))


def pkce_cell(entry: dict[str, Any]) -> str:
    if _static(entry):
        return "—"
    return {"S256": "S256", "required": "required", "none": "no"}[entry.get("pkce", "S256")]


def params_cell(entry: dict[str, Any]) -> str:
    agent, operator = [], []
    for name, spec in param_specs(entry).items():
        label = f"`{name}`" + (f" (default `{spec.default}`)" if spec.default is not None else "")
        (operator if spec.operator_only else agent).append(label)
    cells = agent + ([f"operator: {', '.join(operator)}"] if operator else [])
    return ", ".join(cells) or "—"


def auth_cell(entry: dict[str, Any]) -> str:
    if entry.get("auth_mode") == "app":
        return f"app credentials ({_grants(entry)})"
    if _static(entry):
        return {"api_key": "API key", "basic": "Basic (login)"}[entry["auth_mode"]]
    auth = "OAuth 2.0 + OIDC" if entry.get("oidc") else "OAuth 2.0"
    auth += ", device flow" if entry.get("device_authorization_url") else ""
    return auth + (f", {_grants(entry)}" if entry.get("grants") else "")


def injection(entry: dict[str, Any]) -> str:
    """How a static credential is sent (the proxy's rule), in words."""
    if entry["auth_mode"] == "basic":
        return "`Authorization: Basic base64(username:password)`"
    if entry.get("credential_query_param"):
        return f"query parameter `{entry['credential_query_param']}`"
    value = entry.get("credential_format", "Bearer {api_key}")
    return f"`{entry.get('credential_header', 'Authorization')}: {value}`"


def table(catalog: dict[str, dict[str, Any]]) -> str:
    rows = [
        f"{len(catalog)} templates. *Auth*: the authorization-code grant, with id_token verification where it"
        " says OIDC and the device flow (RFC 8628) where it says so; *API key* / *Basic*: a static credential"
        " the user supplies (`POST /v1/connections`); *client credentials*, *JWT bearer*, *GitHub App*: machine"
        ' grants (`"flow"` in request-connection, no consent). *Refresh*: whether the provider issues refresh tokens'
        " (and what it takes to get one).",
        "",
        "| template | provider | auth | refresh | revocation | PKCE | parameters | docs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in sorted(catalog.items()):
        name = entry.get("display_name", key).replace("|", "\\|")
        cells = [
            f"`{key}`",
            name,
            auth_cell(entry),
            refresh_cell(entry),
            revocation_cell(key, entry),
            pkce_cell(entry),
            params_cell(entry),
            f"[docs]({entry['docs_url']})" if entry.get("docs_url") else "—",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def upsert_example(key: str, entry: dict[str, Any]) -> str:
    name = key.replace("_", "-")
    args = ["python manage.py provider upsert", f"--name {name}"]
    if name != key:
        args.append(f"--template {key}")
    for param, spec in param_specs(entry).items():
        if spec.operator_only and spec.default is None:
            args.append(f"--setting {param}={spec.example}")
    args.append("--client-id … --client-secret …")
    return " ".join(args)


def static_section(key: str, entry: dict[str, Any]) -> str:
    kind = "an API key" if entry["auth_mode"] == "api_key" else "a username and password (HTTP Basic)"
    facts = [f"The user supplies {kind}: get one at <{entry.get('setup_url') or entry['docs_url']}>."]
    facts.append(f"Written from <{entry['docs_url']}>.")
    facts.append(f"Sent as {injection(entry)}.")
    if entry.get("api_headers"):
        facts.append("Also sent: " + ", ".join(f"`{k}: {v}`" for k, v in entry["api_headers"].items()) + ".")
    if entry.get("verify_url"):
        facts.append(f"Verified before it is stored with `GET {entry['verify_url']}`.")
    else:
        facts.append("No cheap verification request: stored unverified.")
    if entry.get("params"):
        facts.append(f"Parameters: {params_cell(entry)}.")
    facts.append(f"API base: `{entry['api_base_url']}`.")
    name = key.replace("_", "-")
    lines = [f"### {entry.get('display_name', key)} (`{key}`)", "", *_wrap(" ".join(facts)), ""]
    lines += ["```sh", f"python manage.py provider upsert --name {name} --template {key}", "```"]
    return "\n".join(lines)


def app_section(key: str, entry: dict[str, Any]) -> str:
    """An app-credentials template (issue 18): no consent, a token for the app itself."""
    flows = ", ".join(f'`"flow": "{g}"`' for g in entry.get("grants", []))
    facts = [f"App credentials: request-connection with {flows} (no consent). Set up at <{entry['setup_url']}>."]
    facts.append(f"Written from <{entry['docs_url']}>.")
    if entry.get("params"):
        facts.append(f"Parameters: {params_cell(entry)}.")
    facts.append(f"API base: `{entry['api_base_url']}`.")
    name = key.replace("_", "-")
    lines = [f"### {entry.get('display_name', key)} (`{key}`)", "", *_wrap(" ".join(facts)), ""]
    lines += ["```sh", f"python manage.py provider upsert --name {name} --template {key} --client-id … "
              "--private-key-file key.pem", "```"]  # fmt: skip
    return "\n".join(lines)


def section(key: str, entry: dict[str, Any]) -> str:
    if entry.get("auth_mode") == "app":
        return app_section(key, entry)
    if _static(entry):
        return static_section(key, entry)
    facts = [f"Register the OAuth app at <{entry['setup_url']}> with redirect URI `{{BASE_URL}}/auth/callback`."]
    facts.append(f"Written from <{entry['docs_url']}>.")
    if entry.get("scopes_url"):
        facts.append(f"Scopes: <{entry['scopes_url']}>.")
    scopes = entry.get("default_scopes", [])
    facts.append(
        f"Default scopes `{' '.join(scopes)}`." if scopes else "No default scopes (the app's settings decide)."
    )
    revocation = revocation_cell(key, entry).replace("—", "no endpoint")
    facts.append(f"Refresh: {refresh_cell(entry)}; revocation: {revocation}; PKCE: {pkce_cell(entry)}.")
    if entry.get("params"):
        facts.append(f"Parameters: {params_cell(entry)}.")
    account = entry.get("account_id_field") or "none documented (reconnect cannot prove the account)"
    facts.append(f"Account id: `{account}`." if entry.get("account_id_field") else f"Account id: {account}.")
    hosts = ", ".join(f"`{h}`" for h in entry.get("api_hosts", []))
    if entry["api_base_url"]:
        facts.append(f"API base: `{entry['api_base_url']}`" + (f" (also {hosts})." if hosts else "."))
    else:
        facts.append("API base: set by the operator (the provider fronts the operator's own API).")
    lines = [f"### {entry.get('display_name', key)} (`{key}`)", "", *_wrap(" ".join(facts)), ""]
    lines += ["```sh", upsert_example(key, entry), "```"]
    return "\n".join(lines)


def _wrap(text: str, width: int = 96) -> list[str]:
    lines, current = [], ""
    for word in text.split(" "):
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return [*lines, current] if current else lines


def _between(text: str, begin: str, end: str) -> tuple[str, str, str]:
    try:
        head, rest = text.split(begin, 1)
        _old, tail = rest.split(end, 1)
    except ValueError:
        raise DocsLayoutError(f"docs/providers.md lacks the markers {begin[:24]}… and {end}") from None
    return head, _old, tail


def handwritten_keys(text: str) -> set[str]:
    """Template keys named in a `### …` heading outside the generated sections."""
    head, _generated, tail = _between(text, SECTIONS_BEGIN, SECTIONS_END)
    headings = re.findall(r"^### .*$", head + tail, flags=re.M)
    return {key for heading in headings for key in re.findall(r"`([a-z0-9_]+)`", heading)}


def render(text: str, catalog: dict[str, dict[str, Any]] | None = None) -> str:
    """The document with both generated parts rendered from the (built-in) catalog."""
    catalog = builtin_catalog() if catalog is None else catalog
    head, _old, tail = _between(text, TABLE_BEGIN, TABLE_END)
    text = f"{head}{TABLE_BEGIN}\n{table(catalog)}\n{TABLE_END}{tail}"
    described = handwritten_keys(text)
    sections = [section(key, entry) for key, entry in sorted(catalog.items()) if key not in described]
    head, _old, tail = _between(text, SECTIONS_BEGIN, SECTIONS_END)
    return f"{head}{SECTIONS_BEGIN}\n" + "\n\n".join(sections) + f"\n{SECTIONS_END}{tail}"
