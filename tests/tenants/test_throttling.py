"""Failed sign-ins and API-key guesses are limited per account and per client address."""

from __future__ import annotations

import uuid

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_counters(settings):
    """Counters live in the cache (Redis in CI): give each test an empty one of its own."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"throttling-{uuid.uuid4().hex}",
        }
    }
    settings.FAILURE_LIMITS = {
        "login_account": (5, 900),
        "login_ip": (8, 900),
        "api_key_ip": (4, 600),
    }


def _login(client, email: str, password: str, address: str = "203.0.113.7"):
    return client.post(
        reverse("login"), {"username": email, "password": password}, REMOTE_ADDR=address
    )


def test_thirty_wrong_passwords_lock_the_account_even_from_many_addresses(client):
    # given
    user = UserFactory()
    # when: 30 wrong passwords, each from a different address
    statuses = [
        _login(client, user.email, f"wrong-{n}", address=f"198.51.100.{n}").status_code
        for n in range(30)
    ]
    # then: the first five are ordinary refusals, the rest are throttled
    assert statuses == [200] * 5 + [429] * 25
    # and even the right password is refused until the window ends
    locked = _login(client, user.email, PASSWORD, address="198.51.100.200")
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) > 0
    assert "Too many failed sign-in attempts" in locked.content.decode()
    assert "_auth_user_id" not in client.session


def test_throttling_does_not_reveal_which_accounts_exist(client):
    # given
    real = UserFactory()
    ghost = "nobody-here@example.org"
    # when
    real_responses = [_login(client, real.email, "wrong", "192.0.2.1") for _ in range(7)]
    ghost_responses = [_login(client, ghost, "wrong", "192.0.2.2") for _ in range(7)]

    # then: the same statuses and the same messages, attempt by attempt
    def errors(response):
        return (response.status_code, response.context["form"].non_field_errors())

    assert [errors(r) for r in real_responses] == [errors(r) for r in ghost_responses]
    assert real_responses[-1].status_code == 429


def test_one_address_guessing_many_accounts_is_throttled(client):
    # given
    users = [UserFactory() for _ in range(10)]
    # when: one wrong password per account, all from one address
    statuses = [_login(client, user.email, "wrong", "203.0.113.50").status_code for user in users]
    # then: the address is blocked after eight failures, for every account
    assert statuses == [200] * 8 + [429] * 2
    assert _login(client, users[0].email, PASSWORD, "203.0.113.50").status_code == 429
    # and another address is unaffected
    assert _login(client, users[0].email, PASSWORD, "203.0.113.51").status_code == 302


def test_a_successful_sign_in_clears_the_account_failures(client):
    user = UserFactory()
    for n in range(4):
        assert _login(client, user.email, "wrong", f"192.0.2.{n}").status_code == 200
    assert _login(client, user.email, PASSWORD, "192.0.2.100").status_code == 302
    client.logout()
    for n in range(4):
        assert _login(client, user.email, "wrong", f"192.0.2.{n + 10}").status_code == 200
    assert _login(client, user.email, PASSWORD, "192.0.2.101").status_code == 302


def test_admin_sign_in_is_throttled_too(client):
    admin = UserFactory(is_staff=True, is_superuser=True)
    for _ in range(5):
        client.post(
            "/admin/login/", {"username": admin.email, "password": "wrong"}, REMOTE_ADDR="192.0.2.9"
        )
    response = client.post(
        "/admin/login/", {"username": admin.email, "password": PASSWORD}, REMOTE_ADDR="192.0.2.9"
    )
    assert "Too many failed sign-in attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_api_key_guessing_is_limited_per_address(raw_api_key):
    # given
    guesser = APIClient(REMOTE_ADDR="198.51.100.77")
    # when
    statuses = [
        guesser.get("/api/v1/tenant/", HTTP_AUTHORIZATION=f"Api-Key ccg_guess_{n}").status_code
        for n in range(6)
    ]
    # then
    assert statuses == [401] * 4 + [429] * 2
    blocked = guesser.get("/api/v1/tenant/", HTTP_AUTHORIZATION=f"Api-Key {raw_api_key}")
    assert blocked.status_code == 429
    assert blocked.json()["error"]["code"] == "throttled"
    assert "Too many failed API-key attempts" in blocked.json()["error"]["message"]
    assert int(blocked["Retry-After"]) > 0
    # and a client at another address still gets in with a valid key
    other = APIClient(REMOTE_ADDR="198.51.100.78")
    assert (
        other.get("/api/v1/tenant/", HTTP_AUTHORIZATION=f"Api-Key {raw_api_key}").status_code == 200
    )


def test_a_forged_forwarded_for_header_does_not_escape_the_limit(raw_api_key):
    guesser = APIClient(REMOTE_ADDR="198.51.100.90")
    statuses = [
        guesser.get(
            "/api/v1/tenant/",
            HTTP_AUTHORIZATION="Api-Key ccg_guess",
            HTTP_X_FORWARDED_FOR=f"10.0.0.{n}",
        ).status_code
        for n in range(6)
    ]
    assert statuses == [401] * 4 + [429] * 2


def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(settings, raw_api_key):
    # given: requests arrive through the proxy at 192.0.2.10 on behalf of two clients
    import ipaddress

    settings.TRUSTED_PROXIES = [ipaddress.ip_network("192.0.2.10/32")]
    proxy = APIClient(REMOTE_ADDR="192.0.2.10")

    def attempt(client_address: str, key: str) -> int:
        return proxy.get(
            "/api/v1/tenant/",
            HTTP_AUTHORIZATION=f"Api-Key {key}",
            HTTP_X_FORWARDED_FOR=f"1.2.3.4, {client_address}",
        ).status_code

    # when
    statuses = [attempt("198.51.100.1", "ccg_guess") for _ in range(5)]
    # then: the guesser is blocked, the other client behind the same proxy is not
    assert statuses == [401] * 4 + [429]
    assert attempt("198.51.100.2", raw_api_key) == 200
