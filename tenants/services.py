"""Writes for tenants, memberships, invitations and API keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from tenants.models import ApiKey, AuditEvent, Invitation, Membership, Tenant, User
from tenants.roles import Action, Role, role_allows
from tenants.tiers import Tier

API_KEY_PREFIX = "ccg_"
INVITATION_TTL = timedelta(days=7)
# Writing last_used_at on every request would turn reads into writes; a minute is precise enough.
API_KEY_TOUCH_INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class CreatedApiKey:
    api_key: ApiKey
    raw_key: str


@dataclass(frozen=True, slots=True)
class CreatedInvitation:
    invitation: Invitation
    raw_token: str


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def audit_record(
    *, tenant: Tenant | None, actor: User | None, action: str, target: str = "", **data: object
) -> AuditEvent:
    """Append one audit event."""
    return AuditEvent.objects.create(
        tenant=tenant,
        actor=actor if isinstance(actor, User) else None,
        action=action,
        target=target[:200],
        data=data,
    )


def require_role(*, membership_role: str, action: str) -> None:
    """Raise PermissionDenied unless ``membership_role`` may perform ``action``."""
    if not role_allows(membership_role, action):
        raise PermissionDenied(f"Your role ({membership_role}) may not {action.replace('_', ' ')}.")


def _unique_slug(name: str) -> str:
    base = slugify(name)[:100] or "tenant"
    slug = base
    while Tenant.objects.filter(slug=slug).exists():
        slug = f"{base}-{secrets.token_hex(3)}"
    return slug


@transaction.atomic
def tenant_create(*, name: str, owner: User, tier: str = Tier.COMMUNITY) -> Tenant:
    """Create a tenant with ``owner`` as its first owner."""
    name = name.strip()
    if not name:
        raise ValidationError({"organisation": "Give your organisation a name."})
    if tier not in Tier.values:
        raise ValidationError({"tier": f"Unknown tier {tier!r}."})
    tenant = Tenant.objects.create(name=name[:120], slug=_unique_slug(name), tier=tier)
    Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
    audit_record(tenant=tenant, actor=owner, action="tenant.created", target=tenant.name)
    return tenant


@transaction.atomic
def signup(*, organisation: str, email: str, password: str) -> tuple[Tenant, User]:
    """Sign-up: a new user who owns a new tenant. Validates everything before writing."""
    email = User.objects.normalize_email(email.strip()).lower()
    errors: dict[str, list[str]] = {}
    if not organisation.strip():
        errors["organisation"] = ["Give your organisation a name."]
    if not email or "@" not in email:
        errors["email"] = ["Enter a valid e-mail address."]
    elif User.objects.filter(email__iexact=email).exists():
        errors["email"] = ["An account with this e-mail already exists. Log in instead."]
    try:
        validate_password(password, user=User(email=email, username=email))
    except ValidationError as exc:
        errors["password"] = list(exc.messages)
    if errors:
        raise ValidationError(errors)
    try:
        user = User.objects.create_user(email=email, password=password)
    except IntegrityError as exc:  # two sign-ups racing for one address
        raise ValidationError({"email": ["An account with this e-mail already exists."]}) from exc
    tenant = tenant_create(name=organisation, owner=user)
    return tenant, user


@transaction.atomic
def membership_role_set(
    *, tenant: Tenant, actor_role: str, membership: Membership, role: str, actor: User | None
) -> Membership:
    """Change a member's role. Only owners grant or take away ownership; a tenant keeps an owner."""
    require_role(membership_role=actor_role, action=Action.MANAGE_MEMBERS)
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    if Role.OWNER in (role, membership.role):
        require_role(membership_role=actor_role, action=Action.MANAGE_OWNERS)
    locked = Membership.objects.for_tenant(tenant).select_for_update().get(pk=membership.pk)
    if locked.role == Role.OWNER and role != Role.OWNER:
        _ensure_another_owner(tenant=tenant, leaving=locked)
    previous = locked.role
    locked.role = role
    locked.save(update_fields=["role"])
    audit_record(
        tenant=tenant,
        actor=actor,
        action="membership.role_changed",
        target=locked.user.email,
        previous=previous,
        role=role,
    )
    return locked


def _ensure_another_owner(*, tenant: Tenant, leaving: Membership) -> None:
    owners = (
        Membership.objects.for_tenant(tenant)
        .select_for_update()
        .filter(role=Role.OWNER)
        .exclude(pk=leaving.pk)
    )
    if not owners.exists():
        raise ValidationError({"role": "A tenant must keep at least one owner."})


@transaction.atomic
def membership_remove(
    *, tenant: Tenant, actor_role: str, membership: Membership, actor: User | None
) -> None:
    """Remove a member (anyone may leave; owners only remove owners; the last owner stays)."""
    leaving_self = actor is not None and membership.user_id == actor.pk
    if not leaving_self:
        require_role(membership_role=actor_role, action=Action.MANAGE_MEMBERS)
    if membership.role == Role.OWNER:
        if not leaving_self:
            require_role(membership_role=actor_role, action=Action.MANAGE_OWNERS)
        _ensure_another_owner(tenant=tenant, leaving=membership)
    audit_record(
        tenant=tenant, actor=actor, action="membership.removed", target=membership.user.email
    )
    Membership.objects.for_tenant(tenant).filter(pk=membership.pk).delete()


@transaction.atomic
def invitation_create(
    *, tenant: Tenant, actor: User, actor_role: str, email: str, role: str = Role.MEMBER
) -> CreatedInvitation:
    """Invite ``email`` to the tenant; the e-mail with the one-time link goes out after commit."""
    require_role(membership_role=actor_role, action=Action.MANAGE_MEMBERS)
    if role == Role.OWNER:
        require_role(membership_role=actor_role, action=Action.MANAGE_OWNERS)
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    email = User.objects.normalize_email(email.strip()).lower()
    if "@" not in email:
        raise ValidationError({"email": "Enter a valid e-mail address."})
    if Membership.objects.for_tenant(tenant).filter(user__email__iexact=email).exists():
        raise ValidationError({"email": "This person is already a member."})
    members = Membership.objects.for_tenant(tenant).count()
    if members >= tenant.policy.max_members:
        raise ValidationError({"email": f"Your tier allows {tenant.policy.max_members} members."})
    raw_token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        tenant=tenant,
        email=email,
        role=role,
        token_hash=_sha256(raw_token),
        invited_by=actor,
        expires_at=timezone.now() + INVITATION_TTL,
    )
    audit_record(tenant=tenant, actor=actor, action="invitation.created", target=email, role=role)
    from tenants.tasks import invitation_email_send

    transaction.on_commit(lambda: invitation_email_send.delay(str(invitation.pk), raw_token))
    return CreatedInvitation(invitation=invitation, raw_token=raw_token)


def invitation_get_by_token_unscoped(*, raw_token: str) -> Invitation | None:
    """The pending invitation a link points to (the token is the capability), or None."""
    invitation = (
        Invitation.objects.unscoped()
        .select_related("tenant")
        .filter(token_hash=_sha256(raw_token))
        .first()
    )
    if invitation is None or not invitation.is_pending or invitation.expires_at < timezone.now():
        return None
    return invitation


@transaction.atomic
def invitation_accept(*, raw_token: str, user: User) -> Membership:
    """Accept an invitation as ``user``; the e-mail must match the invited address."""
    invitation = invitation_get_by_token_unscoped(raw_token=raw_token)
    if invitation is None:
        raise ValidationError("This invitation is invalid, expired or already used.")
    invitation = Invitation.objects.unscoped().select_for_update().get(pk=invitation.pk)
    if not invitation.is_pending:
        raise ValidationError("This invitation is invalid, expired or already used.")
    if invitation.email.lower() != user.email.lower():
        raise ValidationError(f"This invitation was sent to {invitation.email}.")
    membership, _ = Membership.objects.for_tenant(invitation.tenant).get_or_create(
        tenant=invitation.tenant, user=user, defaults={"role": invitation.role}
    )
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit_record(
        tenant=invitation.tenant, actor=user, action="invitation.accepted", target=user.email
    )
    return membership


@transaction.atomic
def invitation_accept_new_user(*, raw_token: str, password: str) -> Membership:
    """Create the invited person's account with ``password`` and accept the invitation."""
    invitation = invitation_get_by_token_unscoped(raw_token=raw_token)
    if invitation is None:
        raise ValidationError("This invitation is invalid, expired or already used.")
    if User.objects.filter(email__iexact=invitation.email).exists():
        raise ValidationError("You already have an account: log in, then open the link again.")
    try:
        validate_password(password, user=User(email=invitation.email, username=invitation.email))
    except ValidationError as exc:
        raise ValidationError({"password": exc.messages}) from exc
    user = User.objects.create_user(email=invitation.email, password=password)
    return invitation_accept(raw_token=raw_token, user=user)


@transaction.atomic
def invitation_revoke(
    *, tenant: Tenant, actor: User, actor_role: str, invitation: Invitation
) -> Invitation:
    """Revoke a pending invitation."""
    require_role(membership_role=actor_role, action=Action.MANAGE_MEMBERS)
    if invitation.revoked_at is None and invitation.accepted_at is None:
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        audit_record(
            tenant=tenant, actor=actor, action="invitation.revoked", target=invitation.email
        )
    return invitation


@transaction.atomic
def api_key_create(
    *, tenant: Tenant, actor: User | None, actor_role: str, name: str, role: str = Role.MEMBER
) -> CreatedApiKey:
    """Create an API key; the raw key is returned once and never stored."""
    require_role(membership_role=actor_role, action=Action.MANAGE_API_KEYS)
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the key a name."})
    if role not in (Role.ADMIN, Role.MEMBER):
        raise ValidationError({"role": "An API key acts as an admin or a member."})
    if role == Role.ADMIN and not role_allows(actor_role, Action.MANAGE_MEMBERS):
        raise PermissionDenied("Only owners and admins create admin keys.")
    active = ApiKey.objects.for_tenant(tenant).filter(revoked_at__isnull=True).count()
    if active >= tenant.policy.max_api_keys:
        raise ValidationError(
            {"name": f"Your tier allows {tenant.policy.max_api_keys} active keys."}
        )
    prefix = secrets.token_hex(4)
    raw_key = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        tenant=tenant,
        name=name[:100],
        prefix=prefix,
        key_hash=_sha256(raw_key),
        role=role,
        created_by=actor,
    )
    audit_record(
        tenant=tenant, actor=actor, action="api_key.created", target=api_key.prefix, name=name
    )
    return CreatedApiKey(api_key=api_key, raw_key=raw_key)


@transaction.atomic
def api_key_revoke(
    *, tenant: Tenant, actor: User | None, actor_role: str, api_key: ApiKey
) -> ApiKey:
    """Revoke an API key; revoking twice is harmless."""
    require_role(membership_role=actor_role, action=Action.MANAGE_API_KEYS)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        audit_record(tenant=tenant, actor=actor, action="api_key.revoked", target=api_key.prefix)
    return api_key


def api_key_authenticate_unscoped(*, raw_key: str) -> ApiKey | None:
    """The active key matching ``raw_key`` (its tenant active too), touching last_used_at."""
    if not raw_key.startswith(API_KEY_PREFIX) or len(raw_key) > 200:
        return None
    api_key = (
        ApiKey.objects.unscoped()
        .select_related("tenant")
        .filter(key_hash=_sha256(raw_key), revoked_at__isnull=True)
        .first()
    )
    if api_key is None or not api_key.tenant.is_active:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > API_KEY_TOUCH_INTERVAL:
        ApiKey.objects.unscoped().filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key


@transaction.atomic
def tenant_set_status(*, tenant: Tenant, status: str, actor: User | None, reason: str) -> Tenant:
    """Suspend or reactivate a tenant (admin operation), with a reason in the audit log."""
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    previous = locked.status
    locked.status = status
    locked.save(update_fields=["status"])
    audit_record(
        tenant=locked,
        actor=actor,
        action=f"tenant.status.{status}",
        target=locked.name,
        previous=previous,
        reason=reason,
    )
    return locked
