"""REST API for contributors and Enterprise pool workers."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ccgsc_site.api import TenantApi, request_person
from ccgsc_site.api_support import AnonRateThrottle
from jobs import dispatch
from tenants.roles import Action


class PoolWorkerOutput(serializers.Serializer):
    contributor = serializers.UUIDField()
    name = serializers.CharField()
    token = serializers.CharField(help_text="The worker token. Shown once; store it now.")


class PoolWorkerApi(TenantApi):
    """Register a worker of your private pool (FL Enterprise); the token is shown once."""

    actions = {"POST": Action.MANAGE_API_KEYS}

    class PoolWorkerInput(serializers.Serializer):
        name = serializers.CharField(max_length=80)

    @extend_schema(request=PoolWorkerInput, responses={201: PoolWorkerOutput})
    def post(self, request: Request) -> Response:
        payload = self.PoolWorkerInput(data=request.data)
        payload.is_valid(raise_exception=True)
        contributor, token = dispatch.pool_worker_register(
            tenant=self.tenant, actor=request_person(request), name=payload.validated_data["name"]
        )
        body = {"contributor": contributor.pk, "name": contributor.display_name, "token": token}
        return Response(body, status=status.HTTP_201_CREATED)


class ContributorOutput(serializers.Serializer):
    contributor = serializers.UUIDField()
    token = serializers.CharField()


class ContributorStatsOutput(ContributorOutput):
    validated_replicas = serializers.IntegerField()
    validated_work_units = serializers.IntegerField()


class AnonymousThrottle(AnonRateThrottle):
    rate = "20/hour"
    scope = "anonymous_contributor"


class ContributorAnonymousApi(APIView):
    """Create an anonymous device contributor and its worker token (the worker page does this)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [AnonymousThrottle]

    @extend_schema(request=None, responses={201: ContributorOutput})
    def post(self, request: Request) -> Response:
        contributor, token = dispatch.contributor_create_anonymous()
        return Response(
            {"contributor": contributor.pk, "token": token}, status=status.HTTP_201_CREATED
        )


class ContributorMeApi(APIView):
    """The signed-in user's contributor: stats, a fresh worker token, or claiming a device."""

    permission_classes = [IsAuthenticated]

    class ClaimInput(serializers.Serializer):
        token = serializers.CharField(max_length=512)

    @extend_schema(responses=ContributorStatsOutput)
    def get(self, request: Request) -> Response:
        contributor = dispatch.contributor_for_user(user=_require_person(request))
        return Response(
            {
                "contributor": contributor.pk,
                "token": dispatch.worker_token_issue(contributor=contributor),
                "validated_replicas": contributor.validated_replicas,
                "validated_work_units": contributor.validated_work_units,
            }
        )

    @extend_schema(request=ClaimInput, responses=ContributorOutput)
    def post(self, request: Request) -> Response:
        payload = self.ClaimInput(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            contributor = dispatch.contributor_claim(
                user=_require_person(request), token=payload.validated_data["token"]
            )
        except ValueError as exc:
            raise serializers.ValidationError({"token": str(exc)}) from exc
        return Response(
            {
                "contributor": contributor.pk,
                "token": dispatch.worker_token_issue(contributor=contributor),
            }
        )


def _require_person(request: Request):  # noqa: ANN202
    user = request_person(request)
    if user is None:
        from rest_framework.exceptions import PermissionDenied

        raise PermissionDenied("Contributor endpoints are for people, not API keys.")
    return user
