"""The WSGI application of either process; DJANGO_SETTINGS_MODULE picks which. Before the first
request it runs the process's STARTUP_CHECKS (the broker's: the key ring reads the stored data)."""

import sys

from dromos.env import env_str

if not env_str("DJANGO_SETTINGS_MODULE"):
    sys.exit("DJANGO_SETTINGS_MODULE is not set: use dromos.settings.gateway or dromos.settings.broker")

from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402

django_application = get_wsgi_application()

from dromos.parsers import ChunkedBodyMiddleware  # noqa: E402 - after Django is set up

# A chunked request body (no Content-Length) is read, not dropped: dromos/parsers.py.
application = ChunkedBodyMiddleware(django_application)

if settings.FAST_PATHS:
    from dromos.fastpath import FastPaths  # noqa: E402

    # The token read's common case without Django's request pipeline (dromos/fastpath.py).
    application = FastPaths(
        application, [(prefix, route, import_string(handler)) for prefix, route, handler in settings.FAST_PATHS]
    )

for _check in settings.STARTUP_CHECKS:
    import_string(_check)()
