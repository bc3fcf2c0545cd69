"""gateway_app/bulkhead.py in process: a call over the key's or the workspace's bound waits up
to GATEWAY_SLOT_WAIT_SECONDS for a slot, then answers 429 concurrency_limited."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from gateway_app.bulkhead import ConcurrencyLimited, slow_call_slot


@pytest.fixture
def limits(settings):
    settings.GATEWAY_SLOW_CALLS_PER_KEY = 2
    settings.GATEWAY_SLOW_CALLS_PER_WORKSPACE = 3
    settings.GATEWAY_SLOT_WAIT_SECONDS = 0.2
    return settings


def key(prefix: str, workspace: str = "ws-a"):
    return SimpleNamespace(prefix=prefix, workspace=workspace)


class Held:
    """Holds a slot in another thread until released."""

    def __init__(self, principal) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, args=(principal,), daemon=True)
        self.thread.start()
        assert self.entered.wait(2)

    def _run(self, principal) -> None:
        with slow_call_slot(principal):
            self.entered.set()
            self.release.wait(5)

    def done(self) -> None:
        self.release.set()
        self.thread.join(2)


def test_over_the_key_bound_waits_then_answers_429_with_retry_after(limits):
    held = [Held(key("k1")), Held(key("k1"))]
    try:
        started = time.monotonic()
        with pytest.raises(ConcurrencyLimited) as raised, slow_call_slot(key("k1")):
            pass
        waited = time.monotonic() - started
        assert 0.15 <= waited < 1.0
        assert raised.value.status_code == 429 and raised.value.code == "concurrency_limited"
        assert raised.value.retry_after == 1 and "API key" in str(raised.value)
        with slow_call_slot(key("k2", "ws-b")):  # another key of another workspace is not limited
            pass
    finally:
        for h in held:
            h.done()
    with slow_call_slot(key("k1")):  # slots are given back
        pass


def test_a_slot_freed_during_the_wait_is_taken(limits):
    held = [Held(key("k1")), Held(key("k1"))]
    threading.Timer(0.05, held[0].done).start()
    try:
        with slow_call_slot(key("k1")):
            pass
    finally:
        for h in held:
            h.done()


def test_the_workspace_bound_counts_every_key_of_the_workspace(limits):
    held = [Held(key("k1")), Held(key("k2")), Held(key("k3"))]
    try:
        with pytest.raises(ConcurrencyLimited) as raised, slow_call_slot(key("k4")):
            pass
        assert "workspace" in str(raised.value)
        with slow_call_slot(key("k5", "ws-other")):
            pass
    finally:
        for h in held:
            h.done()


def test_zero_disables_a_bound(limits):
    limits.GATEWAY_SLOW_CALLS_PER_KEY = limits.GATEWAY_SLOW_CALLS_PER_WORKSPACE = 0
    held = [Held(key("k1")) for _ in range(5)]
    try:
        with slow_call_slot(key("k1")):
            pass
    finally:
        for h in held:
            h.done()


def test_an_error_inside_the_call_gives_the_slot_back(limits):
    limits.GATEWAY_SLOW_CALLS_PER_KEY = 1
    with pytest.raises(RuntimeError), slow_call_slot(key("k1")):
        raise RuntimeError("broker down")
    with slow_call_slot(key("k1")):
        pass
