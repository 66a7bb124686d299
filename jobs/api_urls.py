from django.urls import path

from jobs import analytics_apis, apis, contributor_apis, fl_apis

urlpatterns = [
    path("kernels/", apis.KernelListApi.as_view(), name="api_kernel_list"),
    path("kernels/<uuid:kernel_id>/", apis.KernelDetailApi.as_view(), name="api_kernel_detail"),
    path("jobs/", apis.JobListApi.as_view(), name="api_job_list"),
    path("jobs/<uuid:job_id>/", apis.JobDetailApi.as_view(), name="api_job_detail"),
    path("jobs/<uuid:job_id>/start/", apis.JobStartApi.as_view(), name="api_job_start"),
    path("jobs/<uuid:job_id>/pause/", apis.JobPauseApi.as_view(), name="api_job_pause"),
    path("jobs/<uuid:job_id>/resume/", apis.JobResumeApi.as_view(), name="api_job_resume"),
    path("jobs/<uuid:job_id>/cancel/", apis.JobCancelApi.as_view(), name="api_job_cancel"),
    path("jobs/<uuid:job_id>/tasks/", apis.JobTaskListApi.as_view(), name="api_job_tasks"),
    path("jobs/<uuid:job_id>/result/", apis.JobResultApi.as_view(), name="api_job_result"),
    path("jobs/<uuid:job_id>/rounds/", fl_apis.JobRoundListApi.as_view(), name="api_job_rounds"),
    path(
        "jobs/<uuid:job_id>/model-versions/",
        fl_apis.JobModelVersionListApi.as_view(),
        name="api_job_model_versions",
    ),
    path("fl-jobs/", fl_apis.FlJobListApi.as_view(), name="api_fl_job_list"),
    path("fl-jobs/<uuid:job_id>/", fl_apis.FlJobDetailApi.as_view(), name="api_fl_job_detail"),
    path(
        "analytics-jobs/",
        analytics_apis.AnalyticsJobListApi.as_view(),
        name="api_analytics_job_list",
    ),
    path(
        "analytics-jobs/<uuid:job_id>/",
        analytics_apis.AnalyticsJobDetailApi.as_view(),
        name="api_analytics_job_detail",
    ),
    path(
        "model-versions/<uuid:model_version_id>/download/",
        fl_apis.ModelVersionDownloadApi.as_view(),
        name="api_model_version_download",
    ),
    path(
        "model-versions/<uuid:model_version_id>/onnx/",
        fl_apis.ModelVersionOnnxApi.as_view(),
        name="api_model_version_onnx",
    ),
    path("pool-workers/", contributor_apis.PoolWorkerApi.as_view(), name="api_pool_worker_list"),
    path(
        "contributors/anonymous/",
        contributor_apis.ContributorAnonymousApi.as_view(),
        name="api_contributor_anonymous",
    ),
    path(
        "contributors/me/", contributor_apis.ContributorMeApi.as_view(), name="api_contributor_me"
    ),
]
