"""Sign-up, log in/out, password reset and tenant switching through the web pages."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.urls import reverse

from tenants.models import Membership, Tenant, User
from tenants.roles import Role
from tests.factories import PASSWORD, MembershipFactory

pytestmark = pytest.mark.django_db


def test_signup_creates_tenant_owner_and_logs_in(client):
    # when
    response = client.post(
        reverse("signup"),
        {"organisation": "Acme Lab", "email": "Ada@Example.org", "password": "a-long-passphrase-9"},
    )
    # then
    assert response.status_code == 302
    assert response.url == reverse("dashboard")
    user = User.objects.get()
    assert user.email == "ada@example.org"
    tenant = Tenant.objects.get()
    assert tenant.name == "Acme Lab"
    assert tenant.slug == "acme-lab"
    membership = Membership.objects.for_tenant(tenant).get()
    assert (membership.user, membership.role) == (user, Role.OWNER)
    dashboard = client.get(reverse("dashboard"))
    assert dashboard.status_code == 200
    assert "Acme Lab" in dashboard.content.decode()


def test_signup_rejects_weak_password_and_duplicate_email_without_writing(client, owner):
    # when
    weak = client.post(
        reverse("signup"), {"organisation": "X", "email": "new@example.org", "password": "123"}
    )
    taken = client.post(
        reverse("signup"),
        {"organisation": "Y", "email": owner.email.upper(), "password": "a-long-passphrase-9"},
    )
    # then
    assert weak.status_code == 400
    assert "too short" in weak.content.decode()
    assert taken.status_code == 400
    assert "already exists" in taken.content.decode()
    assert User.objects.count() == 1
    assert Tenant.objects.count() == 0


def test_login_and_logout(client, owner, tenant):
    response = client.post(reverse("login"), {"username": owner.email, "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(reverse("dashboard")).status_code == 200
    client.post(reverse("logout"))
    assert client.get(reverse("dashboard")).status_code == 302


def test_login_with_wrong_password_is_refused(client, owner):
    response = client.post(
        reverse("login"), {"username": owner.email, "password": "wrong-password"}
    )
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_password_reset_sends_link_that_sets_a_new_password(client, owner):
    # when
    client.post(reverse("password_reset"), {"email": owner.email})
    # then
    assert len(mail.outbox) == 1
    link = re.search(r"http://\S+/password-reset/\S+/\S+/", mail.outbox[0].body).group(0)
    path = link.split("testserver", 1)[1]
    form_page = client.get(path, follow=True)
    set_url = form_page.redirect_chain[-1][0]
    done = client.post(
        set_url, {"new_password1": "brand-new-secret-42", "new_password2": "brand-new-secret-42"}
    )
    assert done.status_code == 302
    owner.refresh_from_db()
    assert owner.check_password("brand-new-secret-42")


def test_user_switches_between_tenants(owner_client, owner, tenant, other_tenant):
    # given: the owner also belongs to other_tenant
    MembershipFactory(user=owner, tenant=other_tenant, role=Role.MEMBER)
    # when
    response = owner_client.post(reverse("tenant_switch"), {"tenant_id": str(other_tenant.pk)})
    # then
    assert response.status_code == 302
    page = owner_client.get(reverse("dashboard")).content.decode()
    assert f"<h1>{other_tenant.name}</h1>" in page


def test_switching_to_a_tenant_you_do_not_belong_to_is_404(owner_client, other_tenant, tenant):
    response = owner_client.post(reverse("tenant_switch"), {"tenant_id": str(other_tenant.pk)})
    assert response.status_code == 404
    assert owner_client.session.get("active_tenant_id") != str(other_tenant.pk)
