from django.contrib import admin
from django.urls import include, path

from dromos import health

admin.site.site_header = "Dromos broker"
admin.site.site_title = "Dromos broker"

urlpatterns = [
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", health.metrics),
    path("admin/", admin.site.urls),
    path("", include("broker_app.urls")),
]

handler400 = "dromos.errors.bad_request"
handler404 = "dromos.errors.not_found"
handler500 = "dromos.errors.server_error"
