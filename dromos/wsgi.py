"""The WSGI application of either process; DJANGO_SETTINGS_MODULE picks which. Before the first
request it runs the process's STARTUP_CHECKS (the broker's: the key ring reads the stored data).
With OpenTelemetry on (dromos/tracing.py) its instrumentations are installed before Django
loads the middleware; off, nothing of it is imported."""

import sys

from dromos.env import env_str

if not env_str("DJANGO_SETTINGS_MODULE"):
    sys.exit("DJANGO_SETTINGS_MODULE is not set: use dromos.settings.gateway or dromos.settings.broker")

from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402

from dromos import tracing  # noqa: E402

tracing.setup(settings.DROMOS_ROLE)
django_application = get_wsgi_application()

from dromos.parsers import ChunkedBodyMiddleware  # noqa: E402 - after Django is set up

# A chunked request body (no Content-Length) is read, not dropped: dromos/parsers.py.
application = ChunkedBodyMiddleware(django_application)

if settings.FAST_PATHS and not settings.TRACING_ENABLED:
    from dromos.fastpath import FastPaths  # noqa: E402

    # The token read's common case without Django's request pipeline (dromos/fastpath.py).
    # With tracing on every request goes through Django, whose instrumentation makes the spans.
    application = FastPaths(
        application, [(prefix, route, import_string(handler)) for prefix, route, handler in settings.FAST_PATHS]
    )

for _check in settings.STARTUP_CHECKS:
    import_string(_check)()
