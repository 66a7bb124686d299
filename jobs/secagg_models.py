"""Secure-aggregation state of FL rounds, in PostgreSQL (the source of truth several Daphne
processes and Celery workers agree on).

``SecAggRound`` is a secure round's public parameters and current phase; ``SecAggPhaseSet`` is
the set of clients that made a phase, written once per round and phase under the round's row
lock (a unique constraint makes a second writer fail rather than disagree); ``SecAggMessage``
holds what clients sent: public keys, share ciphertexts the server relays but cannot read, and
the unmasking shares. No update, masked or not, is ever stored here: masked inputs go through
the chunked upload path into storage and are folded into one modular sum.
"""

from __future__ import annotations

from django.db import models

from jobs.fl_models import Round
from tenants.models import Tenant
from tenants.scoping import TenantOwnedModel


class SecAggPhase(models.TextChoices):
    ADVERTISE = "advertise", "Advertise keys"
    SHARE = "share", "Share keys"
    MASKED_INPUT = "masked_input", "Masked input"
    UNMASK = "unmask", "Unmask"
    UNMASKING = "unmasking", "Removing masks (Celery)"
    DONE = "done", "Done"
    ABORTED = "aborted", "Aborted"


class SecAggRound(TenantOwnedModel):
    """A secure round: public parameters (clients are 1..n in cohort order) and its phase."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    round = models.OneToOneField(Round, on_delete=models.CASCADE, related_name="secagg")
    phase = models.CharField(
        max_length=12, choices=SecAggPhase.choices, default=SecAggPhase.ADVERTISE
    )
    phase_deadline = models.DateTimeField()
    # client id (as a string key) → participation id.
    clients = models.JSONField(default=dict)
    threshold = models.PositiveSmallIntegerField()
    min_survivors = models.PositiveIntegerField()
    scale = models.FloatField()
    bound = models.FloatField()
    session = models.BinaryField(max_length=32)
    graph_seed = models.BinaryField(max_length=32)
    # The running modular sum of masked inputs (raw u32[d] LE in storage) and who is in it.
    masked_sum_key = models.CharField(max_length=300, blank=True)
    masked_from = models.JSONField(default=list, blank=True)
    # Coordinate ranges of the unmasked sum already written by Celery (their start offsets).
    unmasked_ranges = models.JSONField(default=list, blank=True)
    abort_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["phase", "phase_deadline"], name="secagground_due")]

    def __str__(self) -> str:
        return f"secagg of {self.round_id} ({self.phase})"


class SecAggPhaseSet(TenantOwnedModel):
    """The clients that made one phase of a secure round, fixed once (and, at the masked input
    phase, the dropped ones: shared keys but sent no input)."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    secagg_round = models.ForeignKey(SecAggRound, on_delete=models.CASCADE, related_name="sets")
    phase = models.CharField(max_length=12, choices=SecAggPhase.choices)
    members = models.JSONField(default=list)
    dropped = models.JSONField(default=list, blank=True)
    fixed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "secagg_round", "phase"], name="secaggphaseset_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.phase} set of {self.secagg_round_id}"


class SecAggMessage(TenantOwnedModel):
    """What one client sent in one phase (the first copy; a repeat is ignored).

    advertise: cipher public key ‖ mask public key (64 bytes); share: per receiver, u32 BE
    receiver ‖ u16 BE length ‖ AES-GCM ciphertext; unmask: per neighbour, u32 BE id ‖ 33-byte
    share."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    secagg_round = models.ForeignKey(SecAggRound, on_delete=models.CASCADE, related_name="messages")
    phase = models.CharField(max_length=12, choices=SecAggPhase.choices)
    client = models.PositiveIntegerField()
    payload = models.BinaryField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "secagg_round", "phase", "client"], name="secaggmessage_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.phase} of client {self.client} in {self.secagg_round_id}"
