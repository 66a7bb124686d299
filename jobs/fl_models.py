"""Federated learning: a job's training configuration, its rounds, who took part, and the global
model versions it produced.

The configuration is its own table (``FlConfig``, referenced by ``Job.fl_config``) rather than
thirty more columns on ``Job``: FC jobs keep their narrow row, and ``Job`` can still state in one
``CheckConstraint`` that an FL job has a configuration and an FC job has a kernel and a range.
The bytes a job stores (update uploads, model versions) are described in ``jobs.fl_artifact_models``.
Both modules are imported at the end of ``jobs.models`` so Django registers their models with
the app.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from jobs.models import Contributor, Job, Worker
from tenants.models import Tenant
from tenants.scoping import TenantOwnedModel


class TrainingKernel(models.TextChoices):
    LOGREG = "logreg", "Logistic regression"
    MLP = "mlp", "Multilayer perceptron"
    CNN = "cnn", "CNN (McMahan et al. 2017)"


class DataSource(models.TextChoices):
    PUBLIC_PARTITION = "public_partition", "Public partition served by the site (not private)"
    CONTRIBUTOR_LOCAL = "contributor_local", "Contributors' own local data (never uploaded)"


class Partition(models.TextChoices):
    IID = "iid", "IID"
    DIRICHLET = "dirichlet", "Dirichlet(α) label skew"
    SHARDS = "shards", "k label-sorted shards per client"


class ClientOptimizer(models.TextChoices):
    SGD = "sgd", "SGD"
    MOMENTUM = "momentum", "SGD with momentum"


class ServerStrategy(models.TextChoices):
    FEDAVG = "fedavg", "FedAvg"
    FEDAVGM = "fedavgm", "FedAvgM"
    FEDADAM = "fedadam", "FedAdam"
    FEDYOGI = "fedyogi", "FedYogi"
    FEDADAGRAD = "fedadagrad", "FedAdagrad"
    SCAFFOLD = "scaffold", "SCAFFOLD"
    QFFL = "qffl", "q-FFL"
    MEDIAN = "median", "Coordinate median (robust)"
    TRIMMED_MEAN = "trimmed_mean", "Trimmed mean (robust)"
    KRUM = "krum", "Krum (robust)"
    MULTI_KRUM = "multi_krum", "Multi-Krum (robust)"
    NORM_BOUNDING = "norm_bounding", "Norm bounding (robust)"


ROBUST_STRATEGIES = frozenset(
    {
        ServerStrategy.MEDIAN,
        ServerStrategy.TRIMMED_MEAN,
        ServerStrategy.KRUM,
        ServerStrategy.MULTI_KRUM,
        ServerStrategy.NORM_BOUNDING,
    }
)

# Strategies that need every individual update at close (a spill, the clients' losses, or their
# control variates) rather than a server step on the streaming mean: they cannot run on a
# securely aggregated sum, nor under DP-FedAvg's clipped, noised mean.
CLOSE_TIME_STRATEGIES = ROBUST_STRATEGIES | frozenset(
    {ServerStrategy.QFFL, ServerStrategy.SCAFFOLD}
)


class Compression(models.TextChoices):
    NONE = "none", "None (float32)"
    INT8 = "int8", "int8, stochastic rounding"
    TOPK = "topk", "Top-k with error feedback"
    SIGNSGD = "signsgd", "signSGD (majority vote)"


class FlMode(models.TextChoices):
    SYNC = "sync", "Synchronous rounds"
    ASYNC = "async", "Buffered asynchronous (FedBuff)"


class StalenessWeighting(models.TextChoices):
    CONSTANT = "constant", "Constant"
    POLYNOMIAL = "polynomial", "Polynomial 1/(1+s)^a"


class DpAccountant(models.TextChoices):
    RDP = "rdp", "Rényi DP (RDP)"
    PLD = "pld", "Privacy loss distributions (PLD, tighter, slower)"


class DpMode(models.TextChoices):
    CENTRAL = "central", "Central: the server noises the sum"
    DISTRIBUTED = (
        "distributed",
        "Distributed: each client adds a noise share under secure aggregation",
    )


class DpSampling(models.TextChoices):
    VOLUNTEER = "volunteer", "Volunteer cohort, accounted at q = 1"
    ENROLLED = "enrolled", "Enrolled population, Poisson sampling with q = cohort / population"


class FlConfig(TenantOwnedModel):
    """How an FL job trains: model, data, rounds, cohort, client and server optimisation, mode."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    # Model: a built-in training kernel and its architecture (layer sizes, see kernels.json).
    model_kernel = models.CharField(max_length=20, choices=TrainingKernel.choices)
    model_sizes = models.JSONField(default=list)
    parameter_count = models.PositiveIntegerField()
    # Data.
    data_source = models.CharField(max_length=20, choices=DataSource.choices)
    dataset = models.SlugField(max_length=60, blank=True)
    partition = models.CharField(max_length=12, choices=Partition.choices, blank=True)
    dirichlet_alpha = models.FloatField(null=True, blank=True)
    shards_per_client = models.PositiveSmallIntegerField(null=True, blank=True)
    partition_clients = models.PositiveIntegerField(null=True, blank=True)
    # A public partition is, by definition, not private: the director and docs say so.
    data_is_private = models.BooleanField(default=True)
    # Contributors' own data: the schema each contributor's file must match (format, features,
    # classes, label column or image size and class names; jobs/services/fl_local_data.py), sent
    # in every invite, and the most samples an update may declare (no shard to check it against).
    local_data = models.JSONField(default=dict, blank=True)
    max_local_samples = models.PositiveIntegerField(null=True, blank=True)
    # Rounds and cohort.
    rounds = models.PositiveIntegerField()
    cohort_size = models.PositiveIntegerField(null=True, blank=True)
    cohort_fraction = models.FloatField(null=True, blank=True)
    over_selection = models.FloatField(default=1.0)
    min_reports = models.PositiveIntegerField()
    round_deadline_seconds = models.PositiveIntegerField()
    target_accuracy = models.FloatField(null=True, blank=True)
    # Client optimisation.
    local_epochs = models.PositiveSmallIntegerField()
    batch_size = models.PositiveIntegerField()
    learning_rate = models.FloatField()
    client_optimizer = models.CharField(max_length=10, choices=ClientOptimizer.choices)
    momentum = models.FloatField(default=0.0)
    proximal_mu = models.FloatField(default=0.0)
    # Server optimisation; strategy_options holds the strategy's own knobs (server learning rate,
    # β1/β2/τ, q, trim fraction, Byzantine count f, norm bound...), checked by fl_job_create.
    server_strategy = models.CharField(max_length=20, choices=ServerStrategy.choices)
    strategy_options = models.JSONField(default=dict, blank=True)
    compression = models.CharField(
        max_length=10, choices=Compression.choices, default=Compression.NONE
    )
    topk_fraction = models.FloatField(null=True, blank=True)
    # Privacy: stored for the privacy engine, accepted only where the tier has them.
    secure_aggregation = models.BooleanField(default=False)
    differential_privacy = models.BooleanField(default=False)
    dp_noise_multiplier = models.FloatField(null=True, blank=True)
    dp_clip_norm = models.FloatField(null=True, blank=True)
    # The tenant's budget (ε, δ) and how each round spends it (docs/security.md). Set only with
    # differential privacy; ``dp_rounds_allowed`` is derived once at creation from these (they
    # never change), so admission compares integers instead of re-running the accountant.
    dp_epsilon = models.FloatField(null=True, blank=True)
    dp_delta = models.FloatField(null=True, blank=True)
    dp_accountant = models.CharField(max_length=4, choices=DpAccountant.choices, blank=True)
    dp_mode = models.CharField(max_length=12, choices=DpMode.choices, blank=True)
    dp_sampling = models.CharField(max_length=10, choices=DpSampling.choices, blank=True)
    dp_population = models.PositiveIntegerField(null=True, blank=True)
    dp_adaptive_clipping = models.BooleanField(default=False)
    dp_target_quantile = models.FloatField(null=True, blank=True)
    dp_rounds_allowed = models.PositiveIntegerField(null=True, blank=True)
    # Secure aggregation: t = ⌊fraction·k⌋ + 1 of a client's k neighbours must help to unmask it
    # (k derived from the invited cohort); fewer survivors than the minimum abort the round.
    secagg_threshold_fraction = models.FloatField(null=True, blank=True)
    secagg_min_survivors = models.PositiveIntegerField(null=True, blank=True)
    # Who may join a protected cohort (secure aggregation or DP): at most this fraction of each
    # cohort anonymous (no account), within the tier's bound (docs/security.md).
    cohort_max_anonymous_fraction = models.FloatField(null=True, blank=True)
    # Mode: synchronous rounds, or buffered asynchronous aggregation of K updates.
    mode = models.CharField(max_length=10, choices=FlMode.choices, default=FlMode.SYNC)
    buffer_size = models.PositiveIntegerField(null=True, blank=True)
    staleness_bound = models.PositiveIntegerField(null=True, blank=True)
    staleness_weighting = models.CharField(
        max_length=12, choices=StalenessWeighting.choices, blank=True
    )
    staleness_exponent = models.FloatField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "model_kernel"], name="flconfig_tenant_kernel")]
        constraints = [
            models.CheckConstraint(
                condition=Q(cohort_size__isnull=False) ^ Q(cohort_fraction__isnull=False),
                name="flconfig_cohort_count_xor_fraction",
            ),
            models.CheckConstraint(
                condition=Q(mode="sync")
                | Q(buffer_size__isnull=False, staleness_bound__isnull=False),
                name="flconfig_async_has_buffer",
            ),
            models.CheckConstraint(
                condition=Q(rounds__gte=1) & Q(min_reports__gte=1) & Q(local_epochs__gte=1),
                name="flconfig_counts_positive",
            ),
            models.CheckConstraint(
                condition=Q(differential_privacy=False)
                | Q(
                    dp_epsilon__gt=0,
                    dp_delta__gt=0,
                    dp_delta__lt=1,
                    dp_noise_multiplier__gt=0,
                    dp_clip_norm__gt=0,
                    dp_rounds_allowed__isnull=False,
                ),
                name="flconfig_dp_has_budget",
            ),
            models.CheckConstraint(
                condition=~Q(dp_mode="distributed") | Q(secure_aggregation=True),
                name="flconfig_distributed_noise_needs_secagg",
            ),
            models.CheckConstraint(
                condition=~Q(data_source="contributor_local")
                | Q(max_local_samples__gte=1, data_is_private=True),
                name="flconfig_local_data_is_private_and_capped",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_kernel} {self.model_sizes} · {self.server_strategy}"

    @property
    def is_robust(self) -> bool:
        return self.server_strategy in ROBUST_STRATEGIES


class RoundStatus(models.TextChoices):
    OPEN = "open", "Open (inviting and collecting)"
    AGGREGATING = "aggregating", "Aggregating"
    CLOSED = "closed", "Closed"
    FAILED = "failed", "Failed"


class Round(TenantOwnedModel):
    """One round of an FL job (in async mode: one buffer of K updates)."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=12, choices=RoundStatus.choices, default=RoundStatus.OPEN)
    deadline = models.DateTimeField(null=True, blank=True)
    cohort_size = models.PositiveIntegerField(default=0)
    reports = models.PositiveIntegerField(default=0)
    dropouts = models.PositiveIntegerField(default=0)
    stragglers = models.PositiveIntegerField(default=0)
    # Invitees that declined or dropped out and whose place went to another worker while the
    # round was open (``fl_rounds_replace``; at most ``cohort_size``).
    replacements = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True)
    bytes_up = models.PositiveBigIntegerField(default=0)
    bytes_down = models.PositiveBigIntegerField(default=0)
    # Cumulative ε of the job after this round (differential privacy only), stored by
    # ``fl_privacy_record`` when the round closes or fails.
    epsilon_spent = models.FloatField(null=True, blank=True)
    # DP rounds (``fl_rounds_dp``): the clip norm C this round's updates are clipped to, the
    # count of folded updates already within it (the adaptive-clipping bits, never per client),
    # and, for adaptive clipping, the next round's C from the noised count.
    clip_norm = models.FloatField(null=True, blank=True)
    clip_within = models.PositiveIntegerField(default=0)
    clip_norm_next = models.FloatField(null=True, blank=True)
    # Invitees without an account (the protected-cohort rule caps them; secure aggregation
    # counts its threshold over the others).
    anonymous_invited = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    # The latest checkpoint of the round's streaming fold in storage ("" = nothing folded yet);
    # written before this pointer moves, so a killed fold resumes from the last committed one.
    fold_checkpoint_key = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["job", "number"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "job", "number"], name="round_job_unique"),
        ]
        indexes = [models.Index(fields=["tenant", "job", "-number"], name="round_tenant_job")]

    def __str__(self) -> str:
        return f"{self.job_id} round {self.number}"


class ParticipationStatus(models.TextChoices):
    INVITED = "invited", "Invited"
    REPORTED = "reported", "Reported"
    DROPPED = "dropped", "Dropped out"
    LATE = "late", "Late (straggler)"
    REJECTED = "rejected", "Rejected (failed validation)"
    # The worker said it will not train (paused, no SIMD, no local data...): not a dropout.
    DECLINED = "declined", "Declined by the worker"


class Participation(TenantOwnedModel):
    """One contributor's part in one round: invited, then reported, dropped, late or declined."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="participations")
    worker = models.ForeignKey(Worker, on_delete=models.PROTECT, related_name="participations")
    contributor = models.ForeignKey(
        Contributor, on_delete=models.PROTECT, related_name="participations"
    )
    status = models.CharField(
        max_length=10, choices=ParticipationStatus.choices, default=ParticipationStatus.INVITED
    )
    samples = models.PositiveIntegerField(default=0)
    # Where the update landed in storage; updates never live in PostgreSQL rows.
    update_key = models.CharField(max_length=300, blank=True)
    included = models.BooleanField(default=False)
    # The model version the client trained from (async staleness = current version - this).
    base_version = models.PositiveIntegerField(default=0)
    # Where and how the update was folded: the round whose buffer took it (in async mode a later
    # round than its own when it arrived after its round closed), the versions emitted while it
    # trained, and its weight in that fold (samples, discounted by staleness in async mode).
    folded_round = models.ForeignKey(
        Round,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="folded_participations",
    )
    staleness = models.PositiveIntegerField(null=True, blank=True)
    fold_weight = models.FloatField(null=True, blank=True)
    loss_sum = models.FloatField(default=0.0)
    correct = models.PositiveIntegerField(default=0)
    rejection_code = models.CharField(max_length=20, blank=True)
    rejection_message = models.CharField(max_length=300, blank=True)
    # The invite as sent: a worker whose invite was lost (another process's channel layer, a
    # Redis blip, a reconnect) is sent it again from here while the round is open.
    invite = models.JSONField(default=dict, blank=True)
    invited_at = models.DateTimeField(auto_now_add=True)
    reported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["round", "invited_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "round", "contributor"],
                name="participation_round_contributor_unique",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "round", "status"], name="participation_tenant_round"),
        ]

    def __str__(self) -> str:
        return f"{self.contributor_id} in {self.round}"


__all__ = [
    "CLOSE_TIME_STRATEGIES",
    "ROBUST_STRATEGIES",
    "ClientOptimizer",
    "Compression",
    "DataSource",
    "DpAccountant",
    "DpMode",
    "DpSampling",
    "FlConfig",
    "FlMode",
    "Participation",
    "ParticipationStatus",
    "Partition",
    "Round",
    "RoundStatus",
    "ServerStrategy",
    "StalenessWeighting",
    "TrainingKernel",
]
