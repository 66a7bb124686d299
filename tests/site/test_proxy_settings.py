"""The proxy's HTTPS header and forwarded addresses are believed only where a deployment says."""

from __future__ import annotations

import ipaddress

import pytest
from django.test import RequestFactory

from ccgsc_site.middleware import ProxyHeadersMiddleware
from ccgsc_site.throttling import client_ip, client_ip_from_scope
from tests.site.test_health_settings_admin import _clean_env, _settings_dump

PRODUCTION = {
    "CCGSC_ENV": "production",
    "DJANGO_SECRET_KEY": "x" * 60,
    "DJANGO_ALLOWED_HOSTS": "ccgsc.example.org",
}


def test_production_trusts_no_proxy_header_unless_configured(tmp_path):
    env = _clean_env(CCGSC_VAR_DIR=str(tmp_path), **PRODUCTION)
    assert _settings_dump(env, "s.SECURE_PROXY_SSL_HEADER", "s.TRUSTED_PROXIES") == ["None", "[]"]


def test_health_probes_are_exempt_from_the_https_redirect(tmp_path):
    import ast
    import re

    env = _clean_env(CCGSC_VAR_DIR=str(tmp_path), **PRODUCTION)
    (exempt,) = _settings_dump(env, "s.SECURE_REDIRECT_EXEMPT")
    patterns = ast.literal_eval(exempt)
    assert all(any(re.search(p, path) for p in patterns) for path in ("healthz", "readyz"))
    assert not any(re.search(p, "api/v1/jobs/") for p in patterns)


def test_the_proxy_header_and_trusted_proxies_come_from_the_environment(tmp_path):
    env = _clean_env(
        CCGSC_VAR_DIR=str(tmp_path),
        CCGSC_PROXY_SSL_HEADER="X-Forwarded-Proto",
        CCGSC_TRUSTED_PROXIES="10.1.0.0/16, 192.0.2.10",
        **PRODUCTION,
    )
    assert _settings_dump(
        env, "s.SECURE_PROXY_SSL_HEADER", "[str(n) for n in s.TRUSTED_PROXIES]"
    ) == ["('HTTP_X_FORWARDED_PROTO', 'https')", "['10.1.0.0/16', '192.0.2.10/32']"]


@pytest.fixture
def behind_proxy(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.TRUSTED_PROXIES = [ipaddress.ip_network("192.0.2.10/32")]
    return settings


def test_the_https_header_counts_only_from_a_trusted_proxy(behind_proxy):
    # given: the middleware in front of a view that reports what Django saw
    seen: list[bool] = []

    def view(request):
        seen.append(request.is_secure())

    handler = ProxyHeadersMiddleware(view)
    factory = RequestFactory()
    # when
    handler(factory.get("/", HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="192.0.2.10"))
    handler(factory.get("/", HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="203.0.113.5"))
    # then
    assert seen == [True, False]


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        ("203.0.113.5", "", "203.0.113.5"),
        ("203.0.113.5", "1.1.1.1", "203.0.113.5"),  # not from a proxy: the header is ignored
        ("192.0.2.10", "", "192.0.2.10"),
        ("192.0.2.10", "198.51.100.1", "198.51.100.1"),
        ("192.0.2.10", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # the client's own claim
        ("192.0.2.10", "198.51.100.1, 192.0.2.10", "198.51.100.1"),  # two proxy hops
        ("192.0.2.10", "garbage", "192.0.2.10"),
    ],
)
def test_client_ip_reads_forwarded_for_only_through_trusted_proxies(
    behind_proxy, remote, forwarded, expected
):
    request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_without_trusted_proxies_forwarded_for_is_never_read(settings):
    settings.TRUSTED_PROXIES = []
    request = RequestFactory().get("/", REMOTE_ADDR="192.0.2.10", HTTP_X_FORWARDED_FOR="1.1.1.1")
    assert client_ip(request) == "192.0.2.10"


def test_websocket_scopes_resolve_the_client_the_same_way(behind_proxy):
    through_proxy = {
        "client": ("192.0.2.10", 5000),
        "headers": [(b"x-forwarded-for", b"6.6.6.6, 198.51.100.1"), (b"host", b"x")],
    }
    direct = {"client": ("203.0.113.5", 5000), "headers": [(b"x-forwarded-for", b"1.1.1.1")]}
    assert client_ip_from_scope(through_proxy) == "198.51.100.1"
    assert client_ip_from_scope(direct) == "203.0.113.5"
    assert client_ip_from_scope({"headers": []}) == ""
