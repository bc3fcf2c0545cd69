"""The dev stack's gunicorn access log (devtools/stack.py): the path only, with the hosted
connect page's token (`/connect/<token>`, issue 16) written as `/connect/{token}`: the path
is that page's only credential, and no log line may hold it."""

from __future__ import annotations

from gunicorn import glogging

_CONNECT = "/connect/"


class AccessLogger(glogging.Logger):
    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        path = atoms.get("U", "")
        if isinstance(path, str) and path.startswith(_CONNECT) and len(path) > len(_CONNECT):
            atoms["U"] = _CONNECT + "{token}"
        return atoms
