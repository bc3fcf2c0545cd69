import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dromos.settings.broker")
django_application = get_wsgi_application()

from dromos.parsers import ChunkedBodyMiddleware  # noqa: E402 - after Django is set up

# A chunked request body (no Content-Length) is read, not dropped: dromos/parsers.py.
application = ChunkedBodyMiddleware(django_application)

if getattr(settings, "DROMOS_ROLE", "") == "broker":
    # A key ring that cannot read the stored tokens must stop the broker before it serves.
    from broker_app.checks import assert_keys_match_data

    assert_keys_match_data()
