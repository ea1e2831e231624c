"""Views a project can mount: the health check as JSON."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
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
