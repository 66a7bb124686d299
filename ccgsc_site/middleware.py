"""Proxy headers are believed only from the proxies a deployment names."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from ccgsc_site.throttling import is_trusted_proxy


class ProxyHeadersMiddleware:
    """Drops the proxy's HTTPS header when the peer is not a trusted proxy.

    Django believes ``SECURE_PROXY_SSL_HEADER`` from anyone who sends it. When the deployment
    also lists its proxies (``TRUSTED_PROXIES``), a request that reached us some other way (a
    client talking to Daphne directly) cannot claim to be HTTPS.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        header = settings.SECURE_PROXY_SSL_HEADER
        if (
            header
            and settings.TRUSTED_PROXIES
            and not is_trusted_proxy(request.META.get("REMOTE_ADDR", ""))
        ):
            request.META.pop(header[0], None)
        return self.get_response(request)
