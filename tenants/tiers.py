"""Tiers and the policy limits each one grants, decided here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models


class Tier(models.TextChoices):
    COMMUNITY = "community", "Community FC"
    CORE = "core", "FL Core"
    ENTERPRISE = "enterprise", "FL Enterprise"


class JobKind(models.TextChoices):
    FC = "fc", "Federated computing"
    FL = "fl", "Federated learning"
    ANALYTICS = "analytics", "Federated analytics"


@dataclass(frozen=True, slots=True)
class TierPolicy:
    """What a tenant on a tier may do. Prices live in billing; limits live here."""

    tier: str
    label: str
    job_kinds: frozenset[str]
    max_concurrent_jobs: int
    max_tasks_per_job: int
    max_quorum: int
    max_cohort_size: int
    secure_aggregation: bool
    differential_privacy: bool
    robust_aggregation: bool
    # Robust rules hold every update of a round (a spill of n·d floats) and take time in n·d
    # (about 4 s for the median of 100 × 1M), so their cohorts are capped separately.
    max_robust_cohort_size: int
    private_worker_pools: bool
    custom_kernels: bool
    max_api_keys: int
    max_members: int
    prepaid: bool
    # Protected FL cohorts (secure aggregation or DP): the most a job may let be anonymous
    # (contributors without an account); docs/security.md, "Who may join a protected cohort".
    max_anonymous_cohort_fraction: float = 0.0

    def allows_job_kind(self, kind: str) -> bool:
        """Whether jobs of ``kind`` may be created on this tier."""
        return kind in self.job_kinds

    def fl_refusals(
        self,
        *,
        cohort_size: int,
        robust_aggregation: bool,
        secure_aggregation: bool,
        differential_privacy: bool,
    ) -> dict[str, str]:
        """Why an FL job with these settings is refused on this tier, by field (empty: allowed).

        ``cohort_size`` is the number of clients invited per round, over-selection included.
        """
        refusals: dict[str, str] = {}
        if not self.allows_job_kind(JobKind.FL):
            refusals["kind"] = f"{self.label} does not include federated learning jobs."
            return refusals
        if cohort_size > self.max_cohort_size:
            refusals["cohort_size"] = (
                f"{self.label} invites at most {self.max_cohort_size} clients per round "
                f"(this job would invite {cohort_size}, over-selection included)."
            )
        if robust_aggregation and not self.robust_aggregation:
            refusals["server_strategy"] = (
                f"Robust aggregation is part of FL Enterprise, not {self.label}."
            )
        elif robust_aggregation and cohort_size > self.max_robust_cohort_size:
            refusals["cohort_size"] = (
                f"Robust aggregation keeps every update of a round: {self.label} invites at most "
                f"{self.max_robust_cohort_size} clients per round with it (this job would invite "
                f"{cohort_size}, over-selection included)."
            )
        if secure_aggregation and not self.secure_aggregation:
            refusals["secure_aggregation"] = f"{self.label} does not include secure aggregation."
        if differential_privacy and not self.differential_privacy:
            refusals["differential_privacy"] = (
                f"{self.label} does not include differential privacy."
            )
        return refusals

    def analytics_refusals(
        self, *, cohort_size: int, secure_aggregation: bool, differential_privacy: bool
    ) -> dict[str, str]:
        """Why an analytics job with these settings is refused on this tier, by field (empty:
        allowed). Analytics rides the FL rounds, so the FL cohort and privacy limits apply."""
        if not self.allows_job_kind(JobKind.ANALYTICS):
            return {"kind": f"{self.label} does not include federated analytics jobs."}
        refusals = self.fl_refusals(
            cohort_size=cohort_size,
            robust_aggregation=False,
            secure_aggregation=secure_aggregation,
            differential_privacy=differential_privacy,
        )
        refusals.pop("kind", None)
        return refusals


POLICIES: dict[str, TierPolicy] = {
    Tier.COMMUNITY: TierPolicy(
        tier=Tier.COMMUNITY,
        label="Community FC",
        job_kinds=frozenset({JobKind.FC}),
        max_concurrent_jobs=3,
        max_tasks_per_job=10_000,
        max_quorum=3,
        max_cohort_size=0,
        secure_aggregation=False,
        differential_privacy=False,
        robust_aggregation=False,
        max_robust_cohort_size=0,
        private_worker_pools=False,
        custom_kernels=False,
        max_api_keys=5,
        max_members=5,
        prepaid=False,
    ),
    Tier.CORE: TierPolicy(
        tier=Tier.CORE,
        label="FL Core",
        job_kinds=frozenset({JobKind.FC, JobKind.FL, JobKind.ANALYTICS}),
        max_concurrent_jobs=20,
        max_tasks_per_job=100_000,
        max_quorum=5,
        max_cohort_size=1_000,
        secure_aggregation=True,
        differential_privacy=True,
        robust_aggregation=False,
        max_robust_cohort_size=0,
        private_worker_pools=False,
        custom_kernels=True,
        max_api_keys=25,
        max_members=50,
        prepaid=True,
        max_anonymous_cohort_fraction=0.25,
    ),
    Tier.ENTERPRISE: TierPolicy(
        tier=Tier.ENTERPRISE,
        label="FL Enterprise",
        job_kinds=frozenset({JobKind.FC, JobKind.FL, JobKind.ANALYTICS}),
        max_concurrent_jobs=200,
        max_tasks_per_job=1_000_000,
        max_quorum=7,
        max_cohort_size=10_000,
        secure_aggregation=True,
        differential_privacy=True,
        robust_aggregation=True,
        max_robust_cohort_size=100,
        private_worker_pools=True,
        custom_kernels=True,
        max_api_keys=200,
        max_members=1_000,
        prepaid=False,
        max_anonymous_cohort_fraction=0.5,
    ),
}


def policy_for(tier: str) -> TierPolicy:
    """The policy of ``tier``; an unknown tier is a programming error."""
    return POLICIES[tier]
