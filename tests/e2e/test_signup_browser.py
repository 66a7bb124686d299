"""A new tenant signs up through the real page, creates an API key and calls the API."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tenants.models import ApiKey, Tenant

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_signup_dashboard_api_key_and_docs(daphne, browser):
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    page.goto(daphne.url + "/")
    page.get_by_role("link", name="Start as a tenant").click()
    page.get_by_label("Organisation name").fill("Browser Bio Lab")
    page.get_by_label("Work e-mail").fill("pi@bio.example.org")
    page.get_by_label("Password").fill("a-long-browser-passphrase")
    page.get_by_role("button", name="Create organisation").click()
    page.wait_for_url("**/dashboard/")
    assert page.get_by_role("heading", level=1).inner_text() == "Browser Bio Lab"

    page.get_by_role("link", name="API keys").first.click()
    page.get_by_label("Key name").fill("notebook")
    page.get_by_role("button", name="Create key").click()
    raw_key = page.get_by_test_id("new-api-key").inner_text().strip()

    request = urllib.request.Request(
        daphne.url + "/api/v1/tenant/", headers={"Authorization": f"Api-Key {raw_key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["name"] == "Browser Bio Lab"

    page.goto(daphne.url + "/api/docs/")
    page.wait_for_selector(".swagger-ui .information-container", timeout=15000)
    assert "CCGSC API" in page.content()
    assert not [e for e in errors if "Content Security Policy" in e], errors

    tenant = Tenant.objects.get(name="Browser Bio Lab")
    assert ApiKey.objects.for_tenant(tenant).get().name == "notebook"
