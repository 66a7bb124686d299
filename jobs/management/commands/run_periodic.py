"""Run the Celery beat schedule in-process: the embedded default's stand-in for beat.

With Redis configured, `celery worker -B` runs the same schedule; this loop exists so that a
machine with no broker still re-queues expired leases and reconciles on time.
"""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand

from ccgsc_site.celery import app


def _interval_s(schedule: object) -> float:
    if isinstance(schedule, timedelta):
        return schedule.total_seconds()
    if isinstance(schedule, int | float):
        return float(schedule)
    run_every = getattr(schedule, "run_every", None)
    if isinstance(run_every, timedelta):
        return run_every.total_seconds()
    raise TypeError(f"unsupported schedule {schedule!r}")


class Command(BaseCommand):
    help = "Run the periodic tasks of CELERY_BEAT_SCHEDULE in a loop, in this process."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--once", action="store_true", help="Run every task once and exit.")

    def handle(self, *args: object, once: bool = False, **options: object) -> None:
        app.loader.import_default_modules()  # registers every app's tasks
        entries = [
            (name, entry["task"], _interval_s(entry["schedule"]))
            for name, entry in settings.CELERY_BEAT_SCHEDULE.items()
        ]
        next_run = dict.fromkeys((name for name, _, _ in entries), 0.0)
        self.stdout.write(
            f"periodic: {', '.join(name for name, _, _ in entries) or 'nothing scheduled'}"
        )
        while True:
            now = time.monotonic()
            for name, task_name, interval in entries:
                if now >= next_run[name]:
                    try:
                        app.tasks[task_name].apply()
                    except Exception as exc:  # noqa: BLE001 - one failing task must not stop the loop
                        self.stderr.write(f"periodic {name} failed: {exc!r}")
                    next_run[name] = now + interval
            if once:
                return
            time.sleep(0.5)
