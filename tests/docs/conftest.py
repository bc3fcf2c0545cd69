"""`run_stack`: the system started exactly as `make run` starts it (the Makefile's recipe,
on the embedded default: SQLite, filesystem Celery transport, no PostgreSQL or Redis), on
free ports and in a temporary directory, with what it printed parsed as a reader reads it."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from oidc_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def make_run_recipe() -> list[str]:
    """The command line of the Makefile's `run` target, with the venv's python."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n\t(.+)$", makefile, re.M).group(1)
    words = shlex.split(recipe)
    assert words[0] == "$(VPY)", recipe
    return [sys.executable, *words[1:]]


@dataclass
class MakeRun:
    output: str
    env: dict[str, str]  # the environment a reader's shell has (plus where the stack lives)
    export_line: str  # the `export DROMOS_GATEWAY_URL=… DROMOS_API_KEY=…` line it printed
    admin_url: str
    admin_user: str
    admin_password: str

    @property
    def printed(self) -> dict[str, str]:
        """The variables of the export line."""
        return dict(word.split("=", 1) for word in shlex.split(self.export_line.removeprefix("export ")))

    @property
    def gateway_url(self) -> str:
        return self.printed["DROMOS_GATEWAY_URL"]


@pytest.fixture(scope="session")
def run_stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("make-run") / "stack"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    # Where `stack.py up` puts the stack and `stack.py manage` finds it (var/stack for a reader).
    env["DROMOS_STACK_DIR"] = str(workdir)
    ports = ["--gateway-port", str(free_port()), "--broker-port", str(free_port()), "--oidc-port", str(free_port())]
    process = subprocess.Popen(
        [*make_run_recipe(), *ports],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            lines.append(line)
            if line.startswith("Any manage.py command"):
                break
        output = "".join(lines)
        admin = re.search(r"^Broker admin: (\S+)  user: (\S+)  password: (\S+)", output, re.M)
        export = re.search(r"^export DROMOS_GATEWAY_URL=.*$", output, re.M)
        assert admin and export, output[-4000:]
        yield MakeRun(
            output=output,
            env=env,
            export_line=export.group(0),
            admin_url=admin.group(1),
            admin_user=admin.group(2),
            admin_password=admin.group(3),
        )
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
