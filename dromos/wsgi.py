import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dromos.settings.broker")
application = get_wsgi_application()

if getattr(settings, "DROMOS_ROLE", "") == "broker":
    # A key ring that cannot read the stored tokens must stop the broker before it serves.
    from broker_app.checks import assert_keys_match_data

    assert_keys_match_data()
