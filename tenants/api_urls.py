from django.urls import path

from tenants import apis

urlpatterns = [
    path("tenant/", apis.TenantCurrentApi.as_view(), name="api_tenant_current"),
    path("members/", apis.MembershipListApi.as_view(), name="api_member_list"),
    path(
        "members/<uuid:membership_id>/",
        apis.MembershipDetailApi.as_view(),
        name="api_member_detail",
    ),
    path("invitations/", apis.InvitationListApi.as_view(), name="api_invitation_list"),
    path(
        "invitations/<uuid:invitation_id>/",
        apis.InvitationDetailApi.as_view(),
        name="api_invitation_detail",
    ),
    path("api-keys/", apis.ApiKeyListApi.as_view(), name="api_api_key_list"),
    path("api-keys/<uuid:api_key_id>/", apis.ApiKeyDetailApi.as_view(), name="api_api_key_detail"),
]
