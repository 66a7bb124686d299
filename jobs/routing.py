"""WebSocket routes.

Browser routes authenticate with the session cookie, so each sits behind an origin validator
(a page on another site cannot ride the cookie). Edge workers send a bearer token in their first
message and no cookies, so their route needs no origin check.
"""

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from jobs import consumers, director


def browser(consumer):  # noqa: ANN001, ANN201
    """Wrap a browser-facing consumer: origin check, then session authentication."""
    return AllowedHostsOriginValidator(AuthMiddlewareStack(consumer))


websocket_urlpatterns = [
    path("ws/edge/", consumers.EdgeWorkerConsumer.as_asgi()),
    path("ws/worker/", browser(consumers.BrowserWorkerConsumer.as_asgi())),
    path("ws/jobs/<uuid:job_id>/", browser(director.JobDirectorConsumer.as_asgi())),
]
