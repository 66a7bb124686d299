"""Tenant REST API: the current tenant, members, invitations and API keys."""

from __future__ import annotations

import uuid

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from ccgsc_site.api import TenantApi, request_person
from tenants import selectors, services
from tenants.roles import Action, Role


class TierPolicySerializer(serializers.Serializer):
    tier = serializers.CharField()
    label = serializers.CharField()
    job_kinds = serializers.ListField(child=serializers.CharField())
    max_concurrent_jobs = serializers.IntegerField()
    max_tasks_per_job = serializers.IntegerField()
    max_quorum = serializers.IntegerField()
    max_cohort_size = serializers.IntegerField()
    secure_aggregation = serializers.BooleanField()
    differential_privacy = serializers.BooleanField()
    robust_aggregation = serializers.BooleanField()
    private_worker_pools = serializers.BooleanField()
    custom_kernels = serializers.BooleanField()


class TenantOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    slug = serializers.CharField()
    tier = serializers.CharField()
    status = serializers.CharField()
    role = serializers.CharField()
    policy = TierPolicySerializer()
    created_at = serializers.DateTimeField()


class TenantCurrentApi(TenantApi):
    """The tenant this request acts for, with the caller's role and the tier's limits."""

    @extend_schema(responses=TenantOutput)
    def get(self, request: Request) -> Response:
        policy = self.tenant.policy
        data = {
            "id": self.tenant.id,
            "name": self.tenant.name,
            "slug": self.tenant.slug,
            "tier": self.tenant.tier,
            "status": self.tenant.status,
            "role": self.role,
            "policy": _policy_dict(policy),
            "created_at": self.tenant.created_at,
        }
        return Response(TenantOutput(data).data)


def _policy_dict(policy) -> dict:  # noqa: ANN001
    return {
        "tier": policy.tier,
        "label": policy.label,
        "job_kinds": sorted(policy.job_kinds),
        "max_concurrent_jobs": policy.max_concurrent_jobs,
        "max_tasks_per_job": policy.max_tasks_per_job,
        "max_quorum": policy.max_quorum,
        "max_cohort_size": policy.max_cohort_size,
        "secure_aggregation": policy.secure_aggregation,
        "differential_privacy": policy.differential_privacy,
        "robust_aggregation": policy.robust_aggregation,
        "private_worker_pools": policy.private_worker_pools,
        "custom_kernels": policy.custom_kernels,
    }


class MembershipOutput(serializers.Serializer):
    id = serializers.UUIDField()
    email = serializers.EmailField(source="user.email")
    role = serializers.CharField()
    created_at = serializers.DateTimeField()


class MembershipListApi(TenantApi):
    """Members of the tenant."""

    @extend_schema(responses=MembershipOutput(many=True))
    def get(self, request: Request) -> Response:
        return self.paginated(selectors.membership_list(tenant=self.tenant), MembershipOutput)


class MembershipDetailApi(TenantApi):
    """Change a member's role or remove them."""

    actions = {"PATCH": Action.MANAGE_MEMBERS, "DELETE": Action.VIEW}

    class MembershipRoleInput(serializers.Serializer):
        role = serializers.ChoiceField(choices=Role.choices)

    @extend_schema(request=MembershipRoleInput, responses=MembershipOutput)
    def patch(self, request: Request, membership_id: uuid.UUID) -> Response:
        membership = selectors.membership_get(tenant=self.tenant, membership_id=membership_id)
        payload = self.MembershipRoleInput(data=request.data)
        payload.is_valid(raise_exception=True)
        membership = services.membership_role_set(
            tenant=self.tenant,
            actor_role=self.role,
            membership=membership,
            role=payload.validated_data["role"],
            actor=request_person(request),
        )
        return Response(MembershipOutput(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, membership_id: uuid.UUID) -> Response:
        membership = selectors.membership_get(tenant=self.tenant, membership_id=membership_id)
        services.membership_remove(
            tenant=self.tenant,
            actor_role=self.role,
            membership=membership,
            actor=request_person(request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationOutput(serializers.Serializer):
    id = serializers.UUIDField()
    email = serializers.EmailField()
    role = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    accepted_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class InvitationListApi(TenantApi):
    """List or send invitations."""

    actions = {"GET": Action.MANAGE_MEMBERS, "POST": Action.MANAGE_MEMBERS}

    class InvitationCreateInput(serializers.Serializer):
        email = serializers.EmailField()
        role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)

    @extend_schema(responses=InvitationOutput(many=True))
    def get(self, request: Request) -> Response:
        return self.paginated(selectors.invitation_list(tenant=self.tenant), InvitationOutput)

    @extend_schema(request=InvitationCreateInput, responses={201: InvitationOutput})
    def post(self, request: Request) -> Response:
        payload = self.InvitationCreateInput(data=request.data)
        payload.is_valid(raise_exception=True)
        created = services.invitation_create(
            tenant=self.tenant,
            actor=request_person(request),
            actor_role=self.role,
            **payload.validated_data,
        )
        return Response(InvitationOutput(created.invitation).data, status=status.HTTP_201_CREATED)


class InvitationDetailApi(TenantApi):
    """Revoke an invitation."""

    actions = {"DELETE": Action.MANAGE_MEMBERS, "GET": Action.MANAGE_MEMBERS}

    @extend_schema(responses=InvitationOutput)
    def get(self, request: Request, invitation_id: uuid.UUID) -> Response:
        invitation = selectors.invitation_get(tenant=self.tenant, invitation_id=invitation_id)
        return Response(InvitationOutput(invitation).data)

    @extend_schema(responses={200: InvitationOutput})
    def delete(self, request: Request, invitation_id: uuid.UUID) -> Response:
        invitation = selectors.invitation_get(tenant=self.tenant, invitation_id=invitation_id)
        invitation = services.invitation_revoke(
            tenant=self.tenant,
            actor=request_person(request),
            actor_role=self.role,
            invitation=invitation,
        )
        return Response(InvitationOutput(invitation).data)


class ApiKeyOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    role = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class ApiKeyCreatedOutput(ApiKeyOutput):
    key = serializers.CharField(help_text="The secret. Shown once; store it now.")


class ApiKeyListApi(TenantApi):
    """List or create API keys."""

    actions = {"GET": Action.MANAGE_API_KEYS, "POST": Action.MANAGE_API_KEYS}

    class ApiKeyCreateInput(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        role = serializers.ChoiceField(choices=[Role.MEMBER, Role.ADMIN], default=Role.MEMBER)

    @extend_schema(responses=ApiKeyOutput(many=True))
    def get(self, request: Request) -> Response:
        return self.paginated(selectors.api_key_list(tenant=self.tenant), ApiKeyOutput)

    @extend_schema(request=ApiKeyCreateInput, responses={201: ApiKeyCreatedOutput})
    def post(self, request: Request) -> Response:
        payload = self.ApiKeyCreateInput(data=request.data)
        payload.is_valid(raise_exception=True)
        created = services.api_key_create(
            tenant=self.tenant,
            actor=request_person(request),
            actor_role=self.role,
            **payload.validated_data,
        )
        data = {**ApiKeyOutput(created.api_key).data, "key": created.raw_key}
        return Response(data, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(TenantApi):
    """Read or revoke an API key."""

    actions = {"GET": Action.MANAGE_API_KEYS, "DELETE": Action.MANAGE_API_KEYS}

    @extend_schema(responses=ApiKeyOutput)
    def get(self, request: Request, api_key_id: uuid.UUID) -> Response:
        api_key = selectors.api_key_get(tenant=self.tenant, api_key_id=api_key_id)
        return Response(ApiKeyOutput(api_key).data)

    @extend_schema(responses={200: ApiKeyOutput})
    def delete(self, request: Request, api_key_id: uuid.UUID) -> Response:
        api_key = selectors.api_key_get(tenant=self.tenant, api_key_id=api_key_id)
        api_key = services.api_key_revoke(
            tenant=self.tenant, actor=request_person(request), actor_role=self.role, api_key=api_key
        )
        return Response(ApiKeyOutput(api_key).data)
