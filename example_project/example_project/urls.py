from django.contrib import admin
from django.urls import include, path

from django_relay.views import health, metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("relay/health/", health, name="relay-health"),
    path("relay/metrics/", metrics, name="relay-metrics"),
    path("", include("example_app.urls")),
]
