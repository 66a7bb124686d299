"""CCGSC site package: settings, ASGI application, URLs and the Celery app."""

from ccgsc_site.celery import app as celery_app

__all__ = ("celery_app",)
