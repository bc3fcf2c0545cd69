"""The HTTP server the image runs for gateway and broker (docker/serve.py: granian, issue 20),
as a real process next to the ops stack: a worker that dies is replaced and its metrics still
count, the server's own log lines are JSON, SIGTERM stops it cleanly; and the dead workers'
live-gauge files are forgotten at scrape time (dromos/health.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from dromos.health import forget_dead_workers
from tests.ops.conftest import start_role, stop_process, wait_for
from tests.ops.test_observability import scrape

HEALTHZ_COUNT = re.compile(
    r'^dromos_http_request_duration_seconds_count\{[^}]*route="/healthz"[^}]*\} (\S+)$', re.MULTILINE
)


def _workers(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def _healthz_count(url: str, **headers: str) -> float:
    return sum(float(value) for value in HEALTHZ_COUNT.findall(scrape(url, **headers)))


@pytest.mark.live
def test_a_killed_worker_is_replaced_and_its_metrics_still_count(ops_stack, tmp_path):
    from oidc_server import free_port

    port = free_port()
    env = {**ops_stack.env, "WEB_WORKERS": "2", "WEB_THREADS": "2"}
    process = start_role("broker", env, tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    key = {"X-API-Key": ops_stack.env["BROKER_API_KEY"]}
    try:
        wait_for(lambda: _status(url + "/healthz") == 200, "the broker under granian", 60)
        workers = wait_for(lambda: len(_workers(process.pid)) == 2 and _workers(process.pid), "two workers", 30)
        for _ in range(40):
            assert requests.get(url + "/healthz", timeout=5).status_code == 200
        before = _healthz_count(url, **key)
        assert before >= 40

        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(
            lambda: victim not in _workers(process.pid) and len(_workers(process.pid)) == 2 and _workers(process.pid),
            "a new worker",
            30,
        )
        assert victim not in replaced
        log_file = tmp_path / f"broker-{port}.log"
        wait_for(lambda: log_file.read_text().count('"Started worker-') == 3, "the new worker's start", 60)
        for _ in range(10):
            assert requests.get(url + "/healthz", timeout=5).status_code == 200
        # The dead worker's requests are still in the sum (its files stay; counters add up).
        assert _healthz_count(url, **key) >= before + 10

        # A request line far over gunicorn's 4,094-byte limit reaches Django: a JSON 404.
        long_id = "c_" + "x" * 6000
        headers = {**key, "X-Dromos-Workspace": "ws-long"}
        answer = requests.get(f"{url}/internal/v1/connections/{long_id}/token", headers=headers, timeout=10)
        assert answer.status_code == 404 and answer.json()["error"] == "not_found", answer.text[:200]

        log = log_file.read_text()
        server_lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert any(line.get("logger") == "_granian" for line in server_lines), log[-2000:]
        assert not [line for line in log.splitlines() if line.startswith("[INFO]") or line.startswith("[WARNING]")]
    finally:
        process.send_signal(signal.SIGTERM)  # graceful: both workers stop, then the server
        try:
            assert process.wait(timeout=15) == 0
        finally:
            stop_process(process)
    assert _status(url + "/healthz") is None


def test_forget_dead_workers_removes_only_the_gone_processes_live_gauges(tmp_path):
    gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True).stdout.strip()
    alive = str(os.getpid())
    for name in (
        f"gauge_livesum_{gone}.db",
        f"gauge_liveall_{gone}.db",
        f"counter_{gone}.db",
        f"gauge_livesum_{alive}.db",
        "gauge_livesum_notapid.db",
    ):
        (tmp_path / name).write_bytes(b"")
    assert forget_dead_workers(str(tmp_path)) == [int(gone)]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [f"counter_{gone}.db", f"gauge_livesum_{alive}.db", "gauge_livesum_notapid.db"]
    )


def _status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return None
