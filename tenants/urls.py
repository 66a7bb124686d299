from django.contrib.auth import views as auth_views
from django.urls import path

from tenants import views

urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password-reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "password-reset/done/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("tenants/switch/", views.tenant_switch, name="tenant_switch"),
    path("members/", views.members, name="members"),
    path("members/<uuid:membership_id>/role/", views.member_role, name="member_role"),
    path("members/<uuid:membership_id>/remove/", views.member_remove, name="member_remove"),
    path(
        "invitations/<uuid:invitation_id>/revoke/",
        views.invitation_revoke,
        name="invitation_revoke",
    ),
    path("invite/<str:token>/", views.invitation_accept, name="invitation_accept"),
    path("api-keys/", views.api_keys, name="api_keys"),
    path("api-keys/<uuid:api_key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
]
