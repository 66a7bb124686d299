"""A real Daphne for the protocol tests, with outbound-message checks on."""

from __future__ import annotations

import pytest

from tests.servers import DaphneServer


@pytest.fixture(scope="module")
def checked_daphne(django_db_setup, django_db_blocker):  # noqa: ANN001, ANN201
    """Daphne on the test database for a whole module (tests commit their own rows); every
    message it builds is validated against its schema, so a bad one fails the test."""
    server = DaphneServer(CCGSC_PROTOCOL_CHECK_OUTBOUND="1")
    server.start()
    yield server
    server.stop()
    assert "OutboundMessageError" not in server.log_tail(10_000)
    assert "Traceback" not in server.log_tail(10_000), server.log_tail(80)
