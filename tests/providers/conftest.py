"""Fixtures of the provider suite: one replay server per session, emptied for each test."""

from __future__ import annotations

import pytest

from tests.providers.replay import Replay


@pytest.fixture(scope="session")
def _replay_server():
    server = Replay().start()
    yield server
    server.stop()


@pytest.fixture
def replay(_replay_server):
    from broker_app.oauth import oidc

    _replay_server.reset()
    oidc.cache_clear()
    yield _replay_server
    _replay_server.reset()
