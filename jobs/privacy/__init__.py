"""Differential privacy for federated learning, never Django.

clipping: L2 clipping, fixed and adaptive; noise: central Gaussian and distributed integer
shares for secure aggregation; accounting: ε from dp-accounting and the budget check;
skellam: the distributed mechanism's share sizing and its own RDP accountant;
dp_fedavg: one round's client and server steps around secure aggregation (import it from
its module: it needs jobs.secagg and so `cryptography`, which the accounting environment lacks).
"""

from jobs.privacy.accounting import (
    VOLUNTEER_SAMPLING_PROBABILITY,
    PrivacyBudget,
    epsilon_spent,
)
from jobs.privacy.clipping import AdaptiveClip, adaptive_noise_multiplier, clip_l2, with_clip_bit
from jobs.privacy.noise import (
    add_central_gaussian,
    add_noise_to_encoded,
    csprng_normal,
    per_client_variance,
    skellam_share,
)

__all__ = [
    "VOLUNTEER_SAMPLING_PROBABILITY",
    "AdaptiveClip",
    "PrivacyBudget",
    "adaptive_noise_multiplier",
    "add_central_gaussian",
    "add_noise_to_encoded",
    "clip_l2",
    "csprng_normal",
    "epsilon_spent",
    "per_client_variance",
    "skellam_share",
    "with_clip_bit",
]
