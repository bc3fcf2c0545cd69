"""Templates an operator adds without a release: `manage.py provider import FILE.toml`
writes them to the file named by settings.PROVIDER_CATALOG_EXTRA (merged into the catalog,
a built-in key cannot be replaced), `provider export [NAME]` prints templates as TOML that
`import` accepts. Both go through spec.entry_problems, the built-in catalog's lint."""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from broker_app.providers import spec

KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,62}$")
MAX_FILE_BYTES = 1_000_000


class CatalogFileError(Exception):
    """The file cannot be imported; the message is one line and names the first problem."""


def parse(text: str) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogFileError(f"not valid TOML: {exc}") from None
    if not data:
        raise CatalogFileError("the file holds no provider table")
    for key, entry in data.items():
        if not isinstance(entry, dict):
            raise CatalogFileError(f"{key!r} is not a table ([{key}])")
    return data


def problems(entries: dict[str, dict[str, Any]], *, builtin: dict[str, Any]) -> list[str]:
    """What keeps these templates out of the catalog: the built-in lint, plus the key rules."""
    found: list[str] = []
    for key, entry in entries.items():
        if not KEY_PATTERN.match(key):
            found.append(f"{key[:64]!r}: a template key is lower-case letters, digits and _ (2-63)")
            continue
        if key in builtin:
            found.append(f"{key}: is a built-in template; import it under another key")
            continue
        typed = _type_problems(key, entry)
        if typed:
            found += typed
            continue
        try:
            found += spec.entry_problems(key, entry)
        except (TypeError, AttributeError, KeyError, ValueError) as exc:  # wrong value types
            found.append(f"{key}: malformed table ({type(exc).__name__})")
        if not str(entry.get("docs_url", "")).startswith("https://"):
            found.append(f"{key}: docs_url (the documentation it was written from) must be an https URL")
    return found


def target() -> Path:
    path = spec.extra_catalog_path()
    if path is None:
        raise CatalogFileError("PROVIDER_CATALOG_EXTRA is not set: name the file imported templates go to")
    return path


def read(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise CatalogFileError(f"the file is larger than {MAX_FILE_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogFileError(f"cannot read {path}: {exc.__class__.__name__}") from None


def first(found: list[str]) -> str:
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"{found[0]}{more}"


def import_file(path: Path) -> list[str]:
    """Validate every table of `path`, then merge them into the extra catalog atomically.
    Returns the imported keys; raises CatalogFileError and writes nothing on any problem."""
    destination = target()
    entries = parse(read(path))
    found = problems(entries, builtin=spec.builtin_catalog())
    if found:
        raise CatalogFileError(first(found))
    merged = {**spec.extra_catalog(), **entries}
    write_atomically(destination, dumps(merged))
    return sorted(entries)


def write_atomically(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


_BOOLS = {"oidc", "refresh", "refresh_token_rotation", "revocation_hint"}
_INTS = {"refresh_token_lifetime_days", "refresh_token_idle_days"}
_LISTS = {
    "default_scopes",
    "transient_errors",
    "callback_params",
    "unreported_scopes",
    "id_token_algs",
    "api_hosts",
    "grants",
    "grant_requires",
}
_TABLES = {
    "api_headers",
    "authorize_params",
    "token_headers",
    "refresh_params",
    "error_aliases",
    "account_fields",
    "metadata_fields",
    "scope_aliases",
    "params",
}


def _type_problems(key: str, entry: dict[str, Any]) -> list[str]:
    """A value of the wrong type would be misread (a string of scopes iterated letter by
    letter), so an imported table is checked for types before the lint runs."""
    found = []
    for name, value in entry.items():
        if name in _BOOLS:
            ok = isinstance(value, bool)
        elif name in _INTS:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif name in _LISTS:
            ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
        elif name == "params":
            ok = isinstance(value, dict) and all(isinstance(v, str | dict) for v in value.values())
            ok = ok and all(isinstance(v, str) or isinstance(v.get("pattern"), str) for v in value.values())
        elif name in _TABLES:
            ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        else:
            ok = isinstance(value, str)
        if not ok:
            found.append(f"{key}: {name} has the wrong type ({type(value).__name__})")
    return found


# -- a TOML writer for catalog tables (values are strings, numbers, booleans, lists of
# those, and tables of those one level deep; params tables two levels) ---------------------
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if "\\" in value and "'" not in value and "\n" not in value:
            return f"'{value}'"  # literal string: patterns keep their backslashes readable
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dumps(entries: dict[str, dict[str, Any]]) -> str:
    blocks = []
    for key, entry in entries.items():
        lines = [f"[{key}]"]
        for name, value in entry.items():
            if name == "params":
                lines += [f"params.{_key(p)} = {_value(v)}" for p, v in value.items()]
            else:
                lines.append(f"{_key(name)} = {_value(value)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
