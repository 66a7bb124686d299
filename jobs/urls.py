from django.urls import path, re_path

from jobs import analytics_views, fl_shards, fl_uploads, views

urlpatterns = [
    path("jobs/", views.job_list, name="job_list"),
    path("jobs/new/", views.job_create, name="job_create"),
    path("jobs/new/fl/", views.fl_job_create, name="fl_job_create"),
    path("jobs/new/analytics/", analytics_views.analytics_job_new, name="analytics_job_create"),
    path(
        "jobs/<uuid:job_id>/analytics/",
        analytics_views.analytics_job_results,
        name="analytics_job_results",
    ),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<uuid:job_id>/control/", views.job_control, name="job_control"),
    re_path(
        r"^jobs/(?P<job_id>[0-9a-f-]{36})/result\.(?P<fmt>json|csv)$",
        views.job_result,
        name="job_result",
    ),
    path(
        "models/<uuid:model_version_id>/download/",
        views.model_version_download,
        name="model_version_download",
    ),
    path(
        "models/<uuid:model_version_id>/onnx/",
        views.model_version_onnx,
        name="model_version_onnx",
    ),
    re_path(r"^weights/(?P<sha256>[0-9a-f]{64})\.f32$", views.model_weights, name="model_weights"),
    path("fl/uploads/", fl_uploads.upload_create, name="fl_upload_create"),
    path("fl/uploads/<uuid:upload_id>", fl_uploads.upload_state, name="fl_upload_state"),
    path(
        "fl/uploads/<uuid:upload_id>/chunks/<int:index>",
        fl_uploads.upload_chunk,
        name="fl_upload_chunk",
    ),
    path(
        "fl/uploads/<uuid:upload_id>/complete",
        fl_uploads.upload_complete,
        name="fl_upload_complete",
    ),
    re_path(r"^kernels/(?P<sha256>[0-9a-f]{64})\.wasm$", views.kernel_module, name="kernel_module"),
    path(
        "fl/shards/<uuid:job_id>/<int:client_index>.bin",
        fl_shards.shard,
        name="fl_shard",
    ),
    re_path(
        r"^fl/controls/(?P<job_id>[0-9a-f-]{36})/(?P<sha256>[0-9a-f]{64})\.f32$",
        fl_shards.control_variate,
        name="fl_control_variate",
    ),
    re_path(
        r"^fl/kernels/(?P<sha256>[0-9a-f]{64})\.wasm$",
        fl_shards.training_kernel,
        name="fl_training_kernel",
    ),
]
