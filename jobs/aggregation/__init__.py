"""Federated-learning aggregation numerics: pure numpy, no Django, no project models.

- ``fold``: streaming weighted mean (FedAvg) with idempotent folds and exact checkpoints.
- ``strategies``: server steps on the aggregate (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi,
  FedAdagrad, SCAFFOLD) and the streaming q-FedAvg fold.
- ``robust``: median, trimmed mean, Krum / Multi-Krum, norm bounding over spilled updates.
- ``compression``: int8, top-k with error feedback, signSGD with majority vote.
- ``validation``: the checks every update passes first, and ``UpdateRejected``.

Conventions: updates are flat float32 vectors f32[d] (model deltas ``w_k - w``); sums are kept
in float64; functions never mutate their inputs unless the name says ``_inplace``.
See ``docs/aggregation.md``.
"""

from jobs.aggregation.compression import (
    SignVote,
    SparseUpdate,
    TopKResidual,
    int8_decode,
    int8_encode,
    sign_encode,
)
from jobs.aggregation.fold import StreamingFold, weighted_mean
from jobs.aggregation.robust import (
    UpdateSpill,
    coordinate_median,
    krum_scores,
    multi_krum,
    multi_krum_select,
    norm_bounded_mean,
    pairwise_squared_distances,
    trimmed_mean,
)
from jobs.aggregation.strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    QFedAvgFold,
    ScaffoldServer,
    fold_weight,
)
from jobs.aggregation.validation import RejectionCode, UpdateRejected, validate_update

__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "QFedAvgFold",
    "RejectionCode",
    "ScaffoldServer",
    "SignVote",
    "SparseUpdate",
    "StreamingFold",
    "TopKResidual",
    "UpdateRejected",
    "UpdateSpill",
    "coordinate_median",
    "fold_weight",
    "int8_decode",
    "int8_encode",
    "krum_scores",
    "multi_krum",
    "multi_krum_select",
    "norm_bounded_mean",
    "pairwise_squared_distances",
    "sign_encode",
    "trimmed_mean",
    "validate_update",
    "weighted_mean",
]
