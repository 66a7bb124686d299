from django.urls import path

from worker_frontend import views

urlpatterns = [
    path("contribute/", views.contribute, name="contribute"),
    path(
        "contribute/local-data-jobs.json",
        views.local_data_jobs,
        name="contribute_local_data_jobs",
    ),
    path("contributor/", views.contributor_profile, name="contributor_profile"),
]
