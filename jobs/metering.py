"""The metering port: how the work planes tell the money plane about work, without importing it.

Jobs never import billing. Billing implements :class:`Metering` and registers it when its app
starts (``billing.apps.BillingConfig.ready``); until then, and in any deployment without billing,
the no-op default admits everything and records nothing.

Every method is called inside the caller's transaction and must only write rows or schedule
after-commit work (``transaction.on_commit``), so metering commits or rolls back with the work it
meters: a validated task is charged exactly once because its usage row is written in the same
transaction that validates it, under the same idempotency rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover - types only, no runtime import cycle
    from jobs.models import Job, Task
    from tenants.models import Tenant


class WorkRefused(Exception):  # noqa: N818 - a domain outcome
    """The money plane refuses to admit more work (for example: the balance cannot cover it)."""


@dataclass(frozen=True, slots=True)
class WorkQuote:
    """A unit of work about to be admitted: FC work units, or one FL round and its traffic."""

    work_units: int = 0
    rounds: int = 0
    bytes_transferred: int = 0


class Metering(Protocol):
    """What the money plane offers the work planes."""

    def admit(self, *, tenant: Tenant, quote: WorkQuote) -> None:
        """Raise :class:`WorkRefused` (with a message for the tenant) if the work cannot be paid."""

    def task_validated(self, *, task: Task, job: Job) -> None:
        """An FC task was validated (inside the validating transaction): meter it and credit its
        contributors, once."""

    def tasks_validated(self, *, tasks: list[tuple[Task, Job]]) -> None:
        """Many FC tasks were validated in one transaction (the dispatch plane's group commit):
        meter and credit each once, ideally with one ledger entry per tenant for the batch."""

    def round_completed(
        self, *, job: Job, round_number: int, bytes_transferred: int, contributor_ids: list
    ) -> None:
        """An FL round was aggregated (inside the closing transaction): charge it once and credit
        the contributors whose updates were included."""

    def withheld_cents(self, *, job: Job) -> int:
        """What the tenant still owes for the job's work (its result is withheld until paid)."""


class NoMetering:
    """The default: everything is admitted and free."""

    def admit(self, *, tenant: Tenant, quote: WorkQuote) -> None:
        return None

    def task_validated(self, *, task: Task, job: Job) -> None:
        return None

    def tasks_validated(self, *, tasks: list[tuple[Task, Job]]) -> None:
        # The default batch path: task by task (an implementation may do better).
        for task, job in tasks:
            self.task_validated(task=task, job=job)

    def round_completed(
        self, *, job: Job, round_number: int, bytes_transferred: int, contributor_ids: list
    ) -> None:
        return None

    def withheld_cents(self, *, job: Job) -> int:
        return 0


_metering: Metering = NoMetering()


def metering_register(implementation: Metering) -> None:
    """Install the money plane's implementation (called once, at app start)."""
    global _metering  # noqa: PLW0603 - the one registration point of the port
    _metering = implementation


def metering() -> Metering:
    """The registered implementation (the no-op default until billing registers)."""
    return _metering
