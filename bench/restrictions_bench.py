"""What narrow-key checks cost per request (issue 19): the guard every /v1 view runs after
authentication (gateway_app.apis.GatewayApi.initial), and gateway_app.restrictions.enforce
for restricted keys, in-process, no I/O (the connection owner cached, as after a key's
first call on a connection).

    DJANGO_SETTINGS_MODULE=dromos.settings.test .venv/bin/python bench/restrictions_bench.py
"""

from __future__ import annotations

import ipaddress
import os
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dromos.settings.test")

import django  # noqa: E402

django.setup()

from gateway_app import restrictions  # noqa: E402
from gateway_app.keys import Principal  # noqa: E402


class Request:
    META = {"REMOTE_ADDR": "127.0.0.1"}
    user: Principal


class View:
    kwargs = {"connection_id": "c_abc"}
    restrict = None


def main(n: int = 200_000) -> None:
    request = Request()

    def guard() -> None:  # as GatewayApi.initial runs it
        principal = request.user
        if principal.networks is not None or principal.narrow:
            restrictions.enforce(request, View)

    cases = (
        ("unrestricted key", Principal(key_id=1, workspace="ws", prefix="abcdefgh", scopes=frozenset())),
        (
            "CIDR-limited key",
            Principal(
                key_id=1,
                workspace="ws",
                prefix="abcdefgh",
                scopes=frozenset(),
                networks=(ipaddress.ip_network("127.0.0.0/8"),),
            ),
        ),
        (
            "user-limited key, connection owner cached",
            Principal(
                key_id=1, workspace="ws", prefix="abcdefgh", scopes=frozenset(), user_ids=frozenset({"u"}), narrow=True
            ),
        ),
    )
    for label, principal in cases:
        restrictions._owners[("ws", "c_abc")] = ("u", "fake")
        request.user = principal
        seconds = timeit.timeit(guard, number=n)
        print(f"{label}: {seconds / n * 1e9:.0f} ns per request")


if __name__ == "__main__":
    main()
