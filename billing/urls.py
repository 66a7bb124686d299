from django.urls import path

from billing import views

urlpatterns = [
    path("pricing/", views.pricing, name="pricing"),
    path("leaderboard/", views.leaderboard, name="leaderboard"),
    path("billing/", views.billing_page, name="billing"),
    path("billing/checkout/", views.checkout, name="billing_checkout"),
    path(
        "billing/test-checkout/<str:session_id>/", views.test_checkout, name="billing_test_checkout"
    ),
    path("billing/portal/", views.portal, name="billing_portal"),
    path("billing/tier/", views.tier_change, name="billing_tier"),
    path("billing/webhooks/stripe/", views.stripe_webhook, name="stripe_webhook"),
    path("contributor/payout/", views.payout_request, name="payout_request"),
]
