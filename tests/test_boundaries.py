"""The import boundaries of the code base, read from the source with `ast` (no import runs):

- the gateway never imports the broker, and the broker never imports the gateway (they
  talk over HTTP only; a deployment of one ships without the other's secrets);
- the shared layer `dromos/` imports neither app (URLconfs and settings name them as
  strings, which Django resolves in the one process that runs that app);
- `broker_app/oauth/` (the OAuth/OIDC protocol client) is framework-free: no Django and
  nothing else of the broker; what it needs (timeouts, leeway, a document cache) is handed
  to it;
- `devtools/` never imports test code (tests may import devtools, not the other way).

Every import counts, at module level or inside a function, absolute or relative, and
`importlib.import_module("…")` with a literal name."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module name the file imports (for `from a import b`: both `a` and `a.b`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                found.add(str(node.args[0].value))
    return found


def sources(*dirs: str) -> list[Path]:
    files = []
    for directory in dirs:
        files += [p for p in sorted((ROOT / directory).rglob("*.py")) if "migrations" not in p.parts]
    assert files, f"no Python files under {dirs}"
    return files


def offending(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """'path: module' for every import of a forbidden package (or a module inside it)."""
    return sorted(
        f"{path.relative_to(ROOT)}: {module}"
        for path in files
        for module in imports_of(path)
        if any(module == f or module.startswith(f + ".") for f in forbidden)
    )


def test_the_gateway_never_imports_the_broker():
    assert offending(sources("gateway_app"), ("broker_app",)) == []


def test_the_broker_never_imports_the_gateway():
    assert offending(sources("broker_app"), ("gateway_app",)) == []


def test_the_shared_layer_imports_neither_app():
    assert offending(sources("dromos"), ("broker_app", "gateway_app")) == []


# What broker_app/oauth/ imports from Django or the rest of the broker (issue 13): the settings
# it reads, and the digest the consent flow stores nonces with (pure code, no framework). No
# models, no ORM: the document cache is a DocumentStore the broker installs. The list may only
# shrink: a new entry fails the test, and so does an entry no longer true.
OAUTH_FRAMEWORK_IMPORTS_TODAY = {
    "broker_app/oauth/client.py: django.conf",
    "broker_app/oauth/client.py: django.conf.settings",
    "broker_app/oauth/oidc.py: broker_app.crypto",
    "broker_app/oauth/oidc.py: broker_app.crypto.digest",
    "broker_app/oauth/oidc.py: django.conf",
    "broker_app/oauth/oidc.py: django.conf.settings",
}


def test_the_oauth_client_is_framework_free():
    files = sources("broker_app/oauth")
    framework = set(offending(files, ("django", "rest_framework", "celery", "broker_app", "gateway_app", "dromos")))
    inside_oauth = {line for line in framework if line.split(": ")[1].startswith("broker_app.oauth")}
    framework -= inside_oauth
    assert framework - OAUTH_FRAMEWORK_IMPORTS_TODAY == set(), "a new framework import in broker_app/oauth/"
    assert OAUTH_FRAMEWORK_IMPORTS_TODAY - framework == set(), (
        "gone from broker_app/oauth/: delete these lines from OAUTH_FRAMEWORK_IMPORTS_TODAY"
    )


def test_devtools_never_imports_test_code():
    files = sources("devtools")
    support = tuple(p.stem for p in (ROOT / "tests" / "support").glob("*.py") if p.stem != "__init__")
    assert offending(files, ("tests", *support)) == []
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.path.insert", "sys.path.append"):
                assert "tests" not in ast.unparse(node), f"{path.relative_to(ROOT)} puts test code on sys.path"


def test_the_checker_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The reader itself: module-level, function-level, relative and import_module imports."""
    package = tmp_path / "gateway_app" / "sub"
    package.mkdir(parents=True)
    (tmp_path / "gateway_app" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(
        "import broker_app.models\n"
        "from .. import views\n"
        "from .sibling import thing\n"
        "def f():\n    from broker_app.crypto import digest\n"
        "    importlib.import_module('broker_app.tasks')\n"
    )
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    found = imports_of(package / "mod.py")
    assert {"broker_app.models", "gateway_app.views", "gateway_app.sub.sibling.thing"} <= found
    assert {"broker_app.crypto.digest", "broker_app.tasks"} <= found
    assert offending([package / "mod.py"], ("broker_app",)) == [
        "gateway_app/sub/mod.py: broker_app.crypto",
        "gateway_app/sub/mod.py: broker_app.crypto.digest",
        "gateway_app/sub/mod.py: broker_app.models",
        "gateway_app/sub/mod.py: broker_app.tasks",
    ]


def test_the_tests_map_names_every_module_and_only_real_files():
    """tests/README.md: one line per module, `- \\`module\\` — test files`."""
    import re

    lines = re.findall(r"^- `([^`]+)` — (.*)$", (ROOT / "tests" / "README.md").read_text(), re.M)
    listed = {module for module, _ in lines}
    modules = {
        str(p.relative_to(ROOT))
        for p in sources("dromos", "gateway_app", "broker_app") + sources("devtools")
        if p.name != "__init__.py" and "oidc-provider" not in p.parts
    }
    assert sorted(modules - listed) == [], "modules without a line in tests/README.md"
    named = [m for m in listed if m.endswith(".py")]
    assert sorted(m for m in named if not (ROOT / m).exists()) == [], "lines for modules that no longer exist"
    tests = {t for _, files in lines for t in re.findall(r"[\w/]+\.py", files)}
    assert sorted(t for t in tests if not (ROOT / "tests" / t).exists()) == [], "test files that do not exist"


def test_a_test_not_marked_live_cannot_start_a_python_child_process():
    import subprocess

    with pytest.raises(AssertionError, match="mark it @pytest.mark.live"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(AssertionError, match="mark it @pytest.mark.live"):
        subprocess.run(["python3", "-c", "pass"], check=False)
    assert subprocess.run(["true"], check=False).returncode == 0  # other programs are fine


@pytest.mark.live
def test_a_live_test_may_start_a_python_child_process():
    import subprocess

    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
