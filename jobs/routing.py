"""WebSocket routes.

Browser routes authenticate with the session cookie, so each sits behind an origin validator
(a page on another site cannot ride the cookie). Edge workers send a bearer token in their first
message and no cookies, so their route needs no origin check.
"""

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator


def browser(consumer):  # noqa: ANN001, ANN201
    """Wrap a browser-facing consumer: origin check, then session authentication."""
    return AllowedHostsOriginValidator(AuthMiddlewareStack(consumer))


websocket_urlpatterns: list = []
