"""Start and stop the local oidc-provider (devtools/oidc-provider/server.js): used by
devtools/stack.py, the tests and the benchmarks.

    from oidc_server import start_oidc_provider, free_port

    port = free_port()
    provider = start_oidc_provider(port, [{
        "client_id": "dromos-test",
        "client_secret": "s3cret",
        "redirect_uris": ["http://127.0.0.1:8001/auth/callback"],
    }], access_token_ttl=3600)
    try:
        provider.issuer          # "http://127.0.0.1:<port>"
        provider.metadata        # the discovery document (dict)
    finally:
        provider.stop()

The handle is also a context manager. Needs ``node`` on PATH and the npm
packages installed: ``npm ci --prefix devtools/oidc-provider``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

__all__ = [
    "DEFAULT_CLIENTS",
    "PROVIDER_DIR",
    "OidcProviderError",
    "OidcProviderHandle",
    "free_port",
    "start_oidc_provider",
]

PROVIDER_DIR = Path(__file__).resolve().parent / "oidc-provider"
INSTALL_HINT = "npm ci --prefix devtools/oidc-provider"
# The client server.js configures when OIDC_CLIENTS_JSON is not set.
DEFAULT_CLIENTS = [
    {
        "client_id": "dromos-demo",
        "client_secret": "dromos-demo-secret",
        "redirect_uris": ["http://127.0.0.1:8001/auth/callback"],
        "token_endpoint_auth_method": "client_secret_basic",
    }
]


class OidcProviderError(RuntimeError):
    """The provider could not be started (missing install, port taken, crash, timeout)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OidcProviderHandle:
    """A running provider process. ``issuer`` has no trailing slash."""

    def __init__(self, process: subprocess.Popen, port: int, clients: list[dict], log_path: Path):
        self.process = process
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.clients = clients
        self.log_path = log_path
        self.metadata: dict = {}

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def log(self) -> str:
        """Everything the node process printed so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process (SIGKILL after ``timeout``); safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)

    def __enter__(self) -> OidcProviderHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<OidcProviderHandle {self.issuer} pid={self.process.pid}>"


def start_oidc_provider(
    port: int,
    clients: list[dict] | None = None,
    access_token_ttl: int = 3600,
    *,
    jwks: dict | None = None,
    timeout: float = 30.0,
    node: str | None = None,
    extra_env: dict | None = None,
) -> OidcProviderHandle:
    """Start server.js on 127.0.0.1:``port`` and wait until discovery answers.

    ``clients``: list of client dicts (client_id, client_secret, redirect_uris,
    optional token_endpoint_auth_method, ...), passed as OIDC_CLIENTS_JSON;
    None keeps the server's default ``dromos-demo`` client. ``jwks``: a private
    JWK Set passed as JWKS_JSON (default: a fresh RSA key per start).
    """
    server_js = PROVIDER_DIR / "server.js"
    if not server_js.is_file():
        raise OidcProviderError(f"{server_js} not found")
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        raise OidcProviderError(
            f"{PROVIDER_DIR / 'node_modules'} is missing (or has no oidc-provider): "
            f"run `{INSTALL_HINT}` from the repository root first"
        )
    node = node or shutil.which("node")
    if not node:
        raise OidcProviderError("`node` (Node.js >= 20.19) is not on PATH")

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise OidcProviderError(f"port {port} is already in use on 127.0.0.1")

    env = dict(os.environ)
    env["PORT"] = str(port)
    env["ACCESS_TOKEN_TTL"] = str(int(access_token_ttl))
    env.pop("OIDC_CLIENTS_JSON", None)
    env.pop("JWKS_JSON", None)
    if clients is not None:
        env["OIDC_CLIENTS_JSON"] = json.dumps(clients)
    if jwks is not None:
        env["JWKS_JSON"] = json.dumps(jwks)
    env.update(extra_env or {})

    try:
        return _start(node, server_js, env, port, clients, timeout)
    except _Stuck as first:
        # Seen once in CI on a loaded machine: node alive for 30 s, never listening, nothing
        # logged. A second start on the same port has always answered in under a second.
        print(f"oidc-provider: retrying once after: {first}", file=sys.stderr)
        return _start(node, server_js, env, port, clients, timeout)


class _Stuck(OidcProviderError):
    """The process is alive but never answered."""


def _process_state(pid: int) -> str:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip() or "-"
        return f"state {state}, wchan {wchan}"
    except (OSError, IndexError):
        return "state unknown"


def _start(
    node: str, server_js: Path, env: dict, port: int, clients: list[dict] | None, timeout: float
) -> OidcProviderHandle:
    fd, log_name = tempfile.mkstemp(prefix=f"oidc-provider-{port}-", suffix=".log")
    log_path = Path(log_name)
    with os.fdopen(fd, "wb") as log_file:
        process = subprocess.Popen(
            [node, str(server_js)],
            cwd=PROVIDER_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    handle = OidcProviderHandle(process, port, clients if clients is not None else DEFAULT_CLIENTS, log_path)

    http = requests.Session()
    http.trust_env = False
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise OidcProviderError(
                f"oidc-provider exited with code {process.returncode} before answering "
                f"on port {port}; its output:\n{handle.log()}"
            )
        try:
            resp = http.get(handle.discovery_url, timeout=2)
            if resp.status_code == 200:
                handle.metadata = resp.json()
                if handle.metadata.get("issuer") != handle.issuer:
                    handle.stop()
                    raise OidcProviderError(
                        f"something else answers on port {port}: issuer "
                        f"{handle.metadata.get('issuer')!r}, expected {handle.issuer!r}"
                    )
                return handle
            last_error = f"HTTP {resp.status_code}"
        except requests.RequestException as exc:
            last_error = str(exc)
        time.sleep(0.1)

    state = _process_state(process.pid)
    handle.stop()
    raise _Stuck(
        f"oidc-provider did not answer {handle.discovery_url} within {timeout:.0f}s "
        f"({last_error}; process {state}); its output:\n{handle.log()}"
    )
