"""Views a project can mount: the health check as JSON, and Prometheus metrics."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from django_relay.health import check_health


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """The health check as JSON: 200 when healthy, 503 otherwise.

    Query parameters: ``node`` (a runner to require, as ``relayhealth --node``)
    and ``max_age`` (seconds). Mount it with
    ``path("relay/health/", django_relay.views.health)``.
    """
    try:
        max_age = float(request.GET["max_age"]) if request.GET.get("max_age") else None
        result = check_health(request.GET.get("node") or None, max_age=max_age)
    except ValueError:
        return JsonResponse({"status": "error", "error": "max_age must be seconds > 0"}, status=400)
    return JsonResponse(result.as_dict(), status=200 if result.ok else 503)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics in the text exposition format (needs the ``prometheus`` extra).

    Mount it with ``path("relay/metrics/", django_relay.views.metrics)``. It serves
    prometheus_client's default registry: the database gauges, and this process's
    counters when ``RELAY["METRICS"]`` is on.
    """
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        from django_relay import metrics as _registers_the_collector  # noqa: F401
    except ImportError as exc:
        raise ImproperlyConfigured(
            "django_relay.views.metrics needs prometheus-client: "
            "pip install 'django-relay[prometheus]'"
        ) from exc
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
