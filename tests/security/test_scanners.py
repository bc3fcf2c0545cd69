"""bandit runs clean on the deployed code with the project's configuration, and that
configuration still catches real problems (its skips are narrow). pip-audit needs the
network; scripts/security-scan.sh runs both in CI (scripts/test.sh)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BANDIT = [
    sys.executable,
    "-m",
    "bandit",
    "-q",
    "-c",
    str(ROOT / "pyproject.toml"),
    "-f",
    "custom",
    "--msg-template",
    "{relpath}:{line} {test_id}",
]


@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_bandit_is_clean_on_the_deployed_code():
    done = subprocess.run(
        [*BANDIT, "-r", "broker_app", "gateway_app", "dromos", "docker"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_bandit_configuration_still_catches_real_problems(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import hashlib, pickle, subprocess, requests\n"
        "def run(cmd, blob, url):\n"
        "    subprocess.call(cmd, shell=True)\n"
        "    pickle.loads(blob)\n"
        "    requests.get(url, verify=False, timeout=5)\n"
        "    eval(cmd)\n"
        "    return hashlib.md5(blob).hexdigest()\n"
    )
    done = subprocess.run([*BANDIT, str(planted)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    found = set(re.findall(r":\d+ (B\d{3})", done.stdout))
    assert {"B602", "B301", "B501", "B307", "B324"} <= found, done.stdout


def test_scanners_are_pinned_and_run_in_ci():
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert re.search(r"^bandit==\d", dev, re.M) and re.search(r"^pip-audit==\d", dev, re.M)
    assert "bash scripts/security-scan.sh" in (ROOT / "scripts" / "test.sh").read_text()
    scan = (ROOT / "scripts" / "security-scan.sh").read_text()
    assert '/bandit" -q -c pyproject.toml' in scan and '/pip-audit" -r requirements.txt' in scan
