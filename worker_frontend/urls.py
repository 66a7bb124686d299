from django.urls import path

from worker_frontend import views

urlpatterns = [
    path("contribute/", views.contribute, name="contribute"),
    path("contributor/", views.contributor_profile, name="contributor_profile"),
]
