from django.apps import AppConfig


class WorkerFrontendConfig(AppConfig):
    name = "worker_frontend"
    verbose_name = "Worker frontend"
