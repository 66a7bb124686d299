"""Roles, member management and invitations."""

from __future__ import annotations

import pytest
from django.core import mail
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse

from tenants import services
from tenants.models import Invitation, Membership
from tenants.roles import Action, Role, role_allows
from tests.factories import PASSWORD, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("role", "action", "allowed"),
    [
        (Role.OWNER, Action.MANAGE_BILLING, True),
        (Role.ADMIN, Action.MANAGE_BILLING, False),
        (Role.ADMIN, Action.MANAGE_MEMBERS, True),
        (Role.MEMBER, Action.MANAGE_MEMBERS, False),
        (Role.MEMBER, Action.RUN_JOBS, True),
        (Role.MEMBER, Action.MANAGE_API_KEYS, False),
        ("nonsense", Action.VIEW, False),
    ],
)
def test_role_table(role, action, allowed):
    assert role_allows(role, action) is allowed


def test_invitation_email_link_lets_a_newcomer_join(
    client, tenant, owner, django_capture_on_commit_callbacks
):
    # given
    with django_capture_on_commit_callbacks(execute=True):
        created = services.invitation_create(
            tenant=tenant,
            actor=owner,
            actor_role=Role.OWNER,
            email="New@Example.org",
            role=Role.ADMIN,
        )
    assert len(mail.outbox) == 1
    assert created.raw_token in mail.outbox[0].body
    assert Invitation.objects.for_tenant(tenant).get().token_hash != created.raw_token
    # when
    response = client.post(
        reverse("invitation_accept", args=[created.raw_token]), {"password": "joined-password-77"}
    )
    # then
    assert response.status_code == 302
    membership = Membership.objects.for_tenant(tenant).get(user__email="new@example.org")
    assert membership.role == Role.ADMIN
    again = client.post(reverse("invitation_accept", args=[created.raw_token]))
    assert again.status_code == 404


def test_invitation_for_someone_else_is_refused(client, tenant, owner):
    created = services.invitation_create(
        tenant=tenant, actor=owner, actor_role=Role.OWNER, email="someone@example.org"
    )
    intruder = UserFactory()
    client.login(email=intruder.email, password=PASSWORD)
    response = client.post(reverse("invitation_accept", args=[created.raw_token]))
    assert response.status_code == 400
    assert not Membership.objects.for_tenant(tenant).filter(user=intruder).exists()


def test_member_cannot_invite_or_promote(tenant, member, owner):
    with pytest.raises(PermissionDenied):
        services.invitation_create(
            tenant=tenant, actor=member, actor_role=Role.MEMBER, email="x@example.org"
        )
    target = Membership.objects.for_tenant(tenant).get(user=member)
    with pytest.raises(PermissionDenied):
        services.membership_role_set(
            tenant=tenant, actor_role=Role.MEMBER, membership=target, role=Role.ADMIN, actor=member
        )
    assert not Invitation.objects.for_tenant(tenant).exists()
    target.refresh_from_db()
    assert target.role == Role.MEMBER


def test_admin_cannot_make_owners_and_last_owner_stays(tenant, owner):
    admin = MembershipFactory(tenant=tenant, role=Role.ADMIN)
    with pytest.raises(PermissionDenied):
        services.membership_role_set(
            tenant=tenant,
            actor_role=Role.ADMIN,
            membership=admin,
            role=Role.OWNER,
            actor=admin.user,
        )
    owner_membership = Membership.objects.for_tenant(tenant).get(user=owner)
    with pytest.raises(ValidationError):
        services.membership_role_set(
            tenant=tenant,
            actor_role=Role.OWNER,
            membership=owner_membership,
            role=Role.MEMBER,
            actor=owner,
        )
    with pytest.raises(ValidationError):
        services.membership_remove(
            tenant=tenant, actor_role=Role.OWNER, membership=owner_membership, actor=owner
        )
    owner_membership.refresh_from_db()
    assert owner_membership.role == Role.OWNER


def test_members_page_invites_and_revokes(owner_client, tenant):
    response = owner_client.post(
        reverse("members"), {"email": "colleague@example.org", "role": "member"}
    )
    assert response.status_code == 302
    invitation = Invitation.objects.for_tenant(tenant).get()
    owner_client.post(reverse("invitation_revoke", args=[invitation.pk]))
    invitation.refresh_from_db()
    assert invitation.revoked_at is not None
    assert services.invitation_get_by_token_unscoped(raw_token="anything") is None


def test_member_may_leave(client, tenant, member):
    client.login(email=member.email, password=PASSWORD)
    membership = Membership.objects.for_tenant(tenant).get(user=member)
    client.post(reverse("member_remove", args=[membership.pk]))
    assert not Membership.objects.for_tenant(tenant).filter(user=member).exists()
