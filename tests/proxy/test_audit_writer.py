"""The proxy's audit rows are written off the request path (gateway_app.proxy_audit): in
batches, none lost when the database fails for a while, the oldest dropped and counted
beyond MAX_PENDING, and every pending row written when the process exits in order."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from gateway_app import proxy_audit
from gateway_app.metrics import PROXY_AUDIT_DROPPED
from gateway_app.models import ProxyCall

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _writer():
    proxy_audit.audit_stop()
    yield
    proxy_audit.audit_stop()


def _row(n: int) -> dict:
    return {
        "workspace": "ws-a",
        "key_prefix": "abcd1234",
        "connection_id": f"c_{n:032d}",
        "provider": "fake",
        "method": "GET",
        "host": "api.example.com",
        "path": f"/items/{n}",
        "status": 200,
        "error": "",
        "bytes_sent": 0,
        "bytes_received": 10,
        "duration_ms": 3,
        "attempts": 1,
        "created_at": timezone.now(),
    }


def _paths() -> list[str]:
    return sorted(ProxyCall.objects.values_list("path", flat=True), key=lambda p: int(p.rsplit("/", 1)[1]))


def test_rows_are_written_in_batches_within_the_flush_window(monkeypatch):
    writes = []
    real = proxy_audit._write
    monkeypatch.setattr(proxy_audit, "_write", lambda rows: (writes.append(len(rows)), real(rows)))
    started = time.monotonic()
    for n in range(40):
        proxy_audit.audit_submit(_row(n))
    deadline = time.monotonic() + 5
    while ProxyCall.objects.count() < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ProxyCall.objects.count() == 40  # written without anyone asking for a flush …
    assert time.monotonic() - started < 2  # … within about FLUSH_SECONDS (0.1 s; loaded machines)
    assert sum(writes) == 40 and len(writes) <= 4  # a few transactions, not 40
    assert _paths() == [f"/items/{n}" for n in range(40)]


def test_a_database_failure_keeps_the_rows_and_writes_each_once_later(monkeypatch, caplog):
    failures = []
    real = proxy_audit._write

    def flaky(rows):
        if len(failures) < 2:
            failures.append(len(rows))
            raise RuntimeError("database unreachable")
        real(rows)

    monkeypatch.setattr(proxy_audit, "_write", flaky)
    for n in range(5):
        proxy_audit.audit_submit(_row(n))
    assert proxy_audit.audit_flush(timeout=15)
    assert len(failures) == 2
    assert _paths() == [f"/items/{n}" for n in range(5)]  # all there, none twice
    assert "proxy audit rows not written yet" in caplog.text


def test_beyond_max_pending_the_oldest_rows_are_dropped_and_counted(monkeypatch):
    monkeypatch.setattr(proxy_audit, "MAX_PENDING", 5)
    release = threading.Event()
    real = proxy_audit._write
    monkeypatch.setattr(proxy_audit, "_write", lambda rows: (release.wait(10), real(rows)))
    before = PROXY_AUDIT_DROPPED._value.get()
    proxy_audit.audit_submit(_row(0))
    deadline = time.monotonic() + 5
    while proxy_audit._pending and time.monotonic() < deadline:  # the writer took row 0
        time.sleep(0.01)
    for n in range(1, 11):
        proxy_audit.audit_submit(_row(n))
    assert len(proxy_audit._pending) == 5
    assert PROXY_AUDIT_DROPPED._value.get() - before == 5
    release.set()
    assert proxy_audit.audit_flush()
    assert _paths() == ["/items/0", "/items/6", "/items/7", "/items/8", "/items/9", "/items/10"]


@pytest.mark.live  # a Python child process (see tests/conftest.py)
def test_an_orderly_exit_writes_every_pending_row():
    """A child process (gateway settings, this test database) queues rows with a flush
    window far longer than its life, then exits: atexit writes them."""
    db = settings.DATABASES["default"]
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_SETTINGS_MODULE": "dromos.settings.gateway",
        "DJANGO_SECRET_KEY": "s" * 40,
        "BROKER_API_KEY": "b" * 40,
        "DROMOS_VAR_DIR": str(ROOT / "var" / "proxy-tests"),
    }
    script = (
        "import django, sys; django.setup()\n"
        "from django.utils import timezone\n"
        "from gateway_app import proxy_audit\n"
        "proxy_audit.FLUSH_SECONDS = 60\n"
        "for n in range(3):\n"
        "    proxy_audit.audit_submit({'workspace': 'ws-a', 'key_prefix': 'p', 'connection_id': 'c_exit',\n"
        "        'provider': 'fake', 'method': 'GET', 'host': 'h', 'path': f'/exit/{n}', 'status': 200,\n"
        "        'error': '', 'bytes_sent': 0, 'bytes_received': 0, 'duration_ms': 1, 'attempts': 1,\n"
        "        'created_at': timezone.now()})\n"
        "sys.exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(ProxyCall.objects.filter(connection_id="c_exit").values_list("path", flat=True)) == [
        "/exit/0",
        "/exit/1",
        "/exit/2",
    ]
