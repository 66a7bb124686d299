"""The protected-cohort rule on the platform (docs/security.md, "Who may join a protected
cohort"): which contributors are accounted, how many anonymous ones a cohort of a job with
secure aggregation or differential privacy may take, and the bound a job may set.

The arithmetic is ``jobs.privacy.eligibility``; this module turns rows and settings into it.
"""

from __future__ import annotations

import random
from typing import Any

from django.core.exceptions import ValidationError

from jobs.fl_models import FlConfig
from jobs.models import Contributor, Job, Worker
from jobs.privacy.eligibility import anonymous_admissible
from jobs.services.fl_admission import fl_cohort_invited

# A job that does not say takes this bound, or its tier's if that is stricter.
DEFAULT_MAX_ANONYMOUS_FRACTION = 0.25


def is_protected(config: FlConfig) -> bool:
    """Whether the job's cohorts fall under the rule: secure aggregation or DP."""
    return bool(config.secure_aggregation or config.differential_privacy)


def is_accounted(contributor: Contributor, *, job: Job) -> bool:
    """An account holder (an active user claimed the device) or a member of the job's tenant's
    private pool (the tenant registered it); anyone else is anonymous."""
    if contributor.pool_tenant_id is not None and contributor.pool_tenant_id == job.tenant_id:
        return True
    return contributor.user_id is not None and contributor.user.is_active


def max_anonymous_fraction(*, job: Job, config: FlConfig) -> float:
    """The job's bound f, never above its tier's (a stored value from a richer tier is cut)."""
    bound = job.tenant.policy.max_anonymous_cohort_fraction
    chosen = config.cohort_max_anonymous_fraction
    if chosen is None:
        chosen = DEFAULT_MAX_ANONYMOUS_FRACTION
    return min(chosen, bound)


def protected_pool(
    *, job: Job, config: FlConfig, workers: list[Worker], rng: random.Random | None
) -> list[Worker]:
    """The eligible workers a protected job's cohort is drawn from: every accounted one and only
    as many anonymous ones (drawn with ``rng``, else the first) as keep any cohort of the
    invited size within ⌊f · cohort⌋ anonymous members. Unprotected jobs: all of them."""
    if not is_protected(config):
        return workers
    accounted = [w for w in workers if is_accounted(w.contributor, job=job)]
    anonymous = [w for w in workers if not is_accounted(w.contributor, job=job)]
    kept = anonymous_admissible(
        accounted=len(accounted),
        anonymous=len(anonymous),
        target=fl_cohort_invited(config=config),
        max_fraction=max_anonymous_fraction(job=job, config=config),
    )
    if kept < len(anonymous):
        anonymous = rng.sample(anonymous, kept) if rng is not None else anonymous[:kept]
    chosen = {w.pk for w in accounted} | {w.pk for w in anonymous}
    return [w for w in workers if w.pk in chosen]  # the stable order the draw is seeded on


def check_anonymous_fraction(*, spec: Any, tier_bound: float, label: str) -> dict[str, str]:
    """Why the job's anonymous bound is refused, by field (empty: accepted). Only protected
    jobs carry one; it is in [0, the tier's bound]."""
    if not (spec.secure_aggregation or spec.differential_privacy):
        return {}
    value = spec.cohort_max_anonymous_fraction
    if value is None:
        return {}
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not 0.0 <= value <= tier_bound:
        return {
            "cohort_max_anonymous_fraction": (
                f"At most this fraction of a protected cohort may be anonymous: 0 to "
                f"{tier_bound:g} on {label} (anonymous contributors cost nothing to multiply, "
                "and Sybils weaken secure aggregation and DP)."
            )
        }
    return {}


def anonymous_fraction_stored(*, spec: Any, tier_bound: float) -> float | None:
    """The bound stored on a protected job: the tenant's, or the default cut to the tier's."""
    if not (spec.secure_aggregation or spec.differential_privacy):
        return None
    if spec.cohort_max_anonymous_fraction is not None:
        return float(spec.cohort_max_anonymous_fraction)
    return min(DEFAULT_MAX_ANONYMOUS_FRACTION, tier_bound)


def refuse_anonymous_fraction(*, spec: Any, config: FlConfig, policy: Any) -> None:
    """Check the bound against the tier and store it on the unsaved configuration."""
    errors = check_anonymous_fraction(
        spec=spec, tier_bound=policy.max_anonymous_cohort_fraction, label=policy.label
    )
    if errors:
        raise ValidationError(errors)
    config.cohort_max_anonymous_fraction = anonymous_fraction_stored(
        spec=spec, tier_bound=policy.max_anonymous_cohort_fraction
    )
