"""URL configuration: pages, the REST API under /api/v1/, admin, health."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.utils.csp import CSP
from django.views.decorators.csp import csp_override
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from ccgsc_site import views
from ccgsc_site.dashboard import dashboard
from tenants.forms import AdminLoginForm

api_v1 = [
    path("", include("tenants.api_urls")),
    path("", include("jobs.api_urls")),
]

urlpatterns = [
    path("", views.landing, name="landing"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path(
        "api/docs/",
        # Swagger UI sets element styles from script; only this page allows inline styles.
        csp_override({**settings.SECURE_CSP, "style-src": [CSP.SELF, CSP.UNSAFE_INLINE]})(
            SpectacularSwaggerSplitView.as_view(url_name="api_schema")
        ),
        name="api_docs",
    ),
    # Last of the API routes: any other path under /api/ is the API's JSON 404.
    re_path(r"^api/", views.api_not_found, name="api_not_found"),
    path("dashboard/", dashboard, name="dashboard"),
    path("", include("tenants.urls")),
    path("", include("jobs.urls")),
    path("", include("worker_frontend.urls")),
    path("", include("billing.urls")),
]

handler400 = "ccgsc_site.views.bad_request"
handler403 = "ccgsc_site.views.permission_denied"
handler404 = "ccgsc_site.views.page_not_found"
handler500 = "ccgsc_site.views.server_error"

admin.site.login_form = AdminLoginForm
admin.site.site_header = "CCGSC administration"
admin.site.site_title = "CCGSC admin"
