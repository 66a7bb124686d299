"""URL configuration: pages, the REST API under /api/v1/, admin, health."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.utils.csp import CSP
from django.views.decorators.csp import csp_override
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from ccgsc_site import views

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
    path("", include("tenants.urls")),
    path("", include("jobs.urls")),
    path("", include("worker_frontend.urls")),
    path("", include("billing.urls")),
]

admin.site.site_header = "CCGSC administration"
admin.site.site_title = "CCGSC admin"
