"""A tenant's privacy settings on FL jobs: the tier gates, validation, the (ε, δ) budget derived at
creation and enforced at admission, ε recorded per round, and the form, page and API."""

from __future__ import annotations

import dp_accounting
import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from drf_spectacular.generators import SchemaGenerator

from billing.operations import balance_adjust
from jobs import services
from jobs.fl_models import FlConfig, Round, RoundStatus
from jobs.models import Job, JobEvent, JobStatus, ModelVersion
from jobs.privacy.accounting import PrivacyBudget, epsilon_spent
from jobs.privacy.skellam import distributed_scale, skellam_epsilon, skellam_release
from jobs.services.fl_privacy import (
    fl_privacy_admit,
    fl_privacy_record,
    fl_privacy_state,
    fl_secagg_plan,
)
from tenants.roles import Role
from tenants.tiers import POLICIES, Tier
from tests.jobs.fl_helpers import fl_job

pytestmark = pytest.mark.django_db

# z = 5 at q = 1 and δ = 1e-5 spends ε ≈ 0.79 in one round and ≈ 2.97 in 11 (RDP): ε = 3 allows 11.
DP = {
    "differential_privacy": True,
    "dp_epsilon": 3.0,
    "dp_delta": 1e-5,
    "dp_noise_multiplier": 5.0,
    "dp_clip_norm": 1.0,
}


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }


def _tier(tenant, tier, owner=None):
    tenant.tier = tier
    tenant.save(update_fields=["tier"])
    if owner is not None:
        balance_adjust(
            tenant=tenant, amount_cents=500, actor=owner, reason="tests", promotional=True
        )
    return tenant


@pytest.fixture
def core(tenant, owner):
    return _tier(tenant, Tier.CORE, owner)


@pytest.fixture
def enterprise(tenant):
    return _tier(tenant, Tier.ENTERPRISE)


def _rounds(job: Job, statuses: list[str]) -> list[Round]:
    return [
        Round.objects.create(tenant=job.tenant, job=job, number=number, status=status)
        for number, status in enumerate(statuses, start=1)
    ]


def _errors(excinfo: pytest.ExceptionInfo) -> dict[str, list[str]]:
    return excinfo.value.message_dict


# ----------------------------------------------------------------------------- tiers


def test_community_has_no_fl_and_so_no_privacy(tenant):
    assert POLICIES[Tier.COMMUNITY].fl_refusals(
        cohort_size=10, robust_aggregation=False, secure_aggregation=True, differential_privacy=True
    ) == {"kind": "Community FC does not include federated learning jobs."}
    with pytest.raises(PermissionDenied):
        fl_job(tenant, secure_aggregation=True, **DP)
    assert not FlConfig.objects.for_tenant(tenant).exists()


def test_core_has_secure_aggregation_and_dp_but_not_robust_aggregation(core):
    job = fl_job(core, secure_aggregation=True, **DP)
    config = job.fl_config
    assert (config.secure_aggregation, config.differential_privacy) == (True, True)

    with pytest.raises(ValidationError) as excinfo:
        fl_job(core, server_strategy="median")
    assert _errors(excinfo) == {
        "server_strategy": ["Robust aggregation is part of FL Enterprise, not FL Core."]
    }


def test_enterprise_has_robust_aggregation_which_never_combines_with_secure_aggregation(
    enterprise,
):
    assert fl_job(enterprise, server_strategy="median").fl_config.is_robust
    with pytest.raises(ValidationError) as excinfo:
        fl_job(enterprise, server_strategy="median", secure_aggregation=True)
    assert "choose one" in _errors(excinfo)["secure_aggregation"][0]


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"dp_epsilon": None}, "dp_epsilon", "Give the budget ε in (0, 100]."),
        ({"dp_epsilon": 0.0}, "dp_epsilon", "Give the budget ε in (0, 100]."),
        ({"dp_delta": 1e-3}, "dp_delta", "δ is in (0, 0.001)"),
        ({"dp_delta": 0.0}, "dp_delta", "δ is in (0, 0.001)"),
        (
            {"dp_sampling": "enrolled", "dp_population": 5000, "dp_delta": 1e-3 / 2},
            "dp_delta",
            "δ is in (0, 0.0002)",
        ),
        (
            {"dp_sampling": "enrolled", "dp_population": 5},
            "dp_population",
            "State the enrolled population: 10 (the invited cohort)",
        ),
        ({"dp_noise_multiplier": 0.0}, "dp_noise_multiplier", "noise multiplier z in (0, 100]"),
        ({"dp_clip_norm": -1.0}, "dp_clip_norm", "clipping norm C > 0"),
        ({"dp_mode": "distributed"}, "dp_mode", "Distributed noise needs secure aggregation"),
        (
            {"dp_mode": "distributed", "secure_aggregation": True, "dp_adaptive_clipping": True},
            "dp_adaptive_clipping",
            "the server cannot check that a client's bit is 0 or 1",
        ),
        (
            {"dp_mode": "distributed", "secure_aggregation": True, "dp_accountant": "pld"},
            "dp_accountant",
            "Skellam mechanism, accounted by its RDP bound",
        ),
        (
            {
                "dp_mode": "distributed",
                "secure_aggregation": True,
                "dp_sampling": "enrolled",
                "dp_population": 1000,
            },
            "dp_sampling",
            "without amplification by subsampling (q = 1): choose volunteer",
        ),
        (
            {"dp_adaptive_clipping": True, "dp_noise_multiplier": 1.0},
            "dp_adaptive_clipping",
            "needs 2σ_b > z: with z = 1, at least 11 minimum reports",
        ),
        (
            {"dp_adaptive_clipping": True, "dp_target_quantile": 1.0, "cohort_size": 100},
            "dp_target_quantile",
            "quantile γ of update norms in (0, 1)",
        ),
        (
            {"secure_aggregation": True, "secagg_threshold_fraction": 0.4},
            "secagg_threshold_fraction",
            "The threshold t/k is in [0.5, 1)",
        ),
        (
            {"secure_aggregation": True, "secagg_min_survivors": 11},
            "secagg_min_survivors",
            "3 to the invited cohort (10)",
        ),
        (
            {"secure_aggregation": True, "cohort_size": 2},
            "secure_aggregation",
            "at least 3 clients a round",
        ),
        (
            {"server_strategy": "scaffold"},
            "server_strategy",
            "scaffold needs every client's own update",
        ),
        (
            {"server_strategy": "qffl", "secure_aggregation": True},
            "server_strategy",
            "combines with neither secure aggregation nor differential privacy",
        ),
    ],
)
def test_privacy_settings_are_refused_by_field_and_nothing_is_written(core, fields, field, text):
    with pytest.raises(ValidationError) as excinfo:
        fl_job(core, **{**DP, **fields})
    assert text in " ".join(_errors(excinfo)[field])
    assert not FlConfig.objects.for_tenant(core).exists()


def test_a_job_whose_first_round_exceeds_the_budget_is_refused_with_the_rounds_it_allows(core):
    with pytest.raises(ValidationError) as excinfo:
        fl_job(core, **{**DP, "dp_epsilon": 0.5})

    assert _errors(excinfo) == {
        "dp_epsilon": [
            "One round at z = 5 spends ε = 0.795 (δ = 1e-05, RDP): above the budget ε = 0.5, "
            "so the budget allows 0 rounds. Raise ε or the noise multiplier z."
        ]
    }
    assert not Job.objects.for_tenant(core).exists()
    assert not ModelVersion.objects.for_tenant(core).exists()


def test_a_distributed_job_is_accounted_by_the_skellam_bound_at_its_worst_round(core):
    # given a distributed-noise job of 10 invited clients over 650 parameters, z = 5, C = 1
    job = fl_job(core, **DP, secure_aggregation=True, dp_mode="distributed")
    config = job.fl_config
    # then its rounds allowed come from the Skellam accountant at the smallest scale a round can
    # use (every invitee's share in the headroom, one share counted on)
    scale = distributed_scale(n_clients=10, clip_norm=1.0, noise_multiplier=5.0, noise_shares=1)
    release = skellam_release(
        clip_norm=1.0, scale=scale, dimension=config.parameter_count, variance=(5.0 * scale) ** 2
    )
    allowed = config.dp_rounds_allowed
    assert skellam_epsilon([(release, allowed)], delta=1e-5) <= 3.0
    assert skellam_epsilon([(release, allowed + 1)], delta=1e-5) > 3.0
    # and the Gaussian at the same z allows no more (discretisation costs, never pays)
    assert allowed <= PrivacyBudget(epsilon=3.0, delta=1e-5, noise_multiplier=5.0).max_rounds()
    # and a round that closed without a finished secure aggregation records the worst case
    (first,) = _rounds(job, [RoundStatus.CLOSED])
    assert fl_privacy_record(round=first).epsilon_spent == pytest.approx(
        skellam_epsilon([(release, 1)], delta=1e-5)
    )


def test_secure_aggregation_derives_k_and_t_from_the_invited_cohort(core):
    job = fl_job(core, secure_aggregation=True, cohort_size=100, over_selection=1.3, min_reports=90)
    plan = fl_secagg_plan(job=job)
    # n = 130 invited: k = 2·⌈log2 130⌉ = 16, t = ⌊0.5·16⌋ + 1 = 9.
    assert (plan.cohort_invited, plan.neighbours, plan.threshold, plan.min_survivors) == (
        130,
        16,
        9,
        90,
    )
    small = fl_job(core, secure_aggregation=True, cohort_size=5, secagg_threshold_fraction=0.75)
    plan = fl_secagg_plan(job=small)
    assert (plan.neighbours, plan.threshold, plan.min_survivors) == (4, 4, 5)  # the full graph


# ----------------------------------------------------------------------------- accounting


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_the_budget_and_the_recorded_epsilon_are_the_accountants(core, accountant):
    job = fl_job(core, **{**DP, "dp_accountant": accountant})
    config = job.fl_config
    budget = PrivacyBudget(
        epsilon=3.0,
        delta=1e-5,
        noise_multiplier=5.0,
        sampling_probability=1.0,
        accountant=accountant,
    )
    # The accountant's own bisection over 10,000 rounds is slow under PLD; 64 brackets the answer.
    assert config.dp_rounds_allowed == budget.max_rounds(limit=64) < 64

    rounds = _rounds(job, [RoundStatus.CLOSED, RoundStatus.CLOSED])
    fl_privacy_record(round=rounds[1])

    expected = epsilon_spent(
        noise_multiplier=5.0, sampling_probability=1.0, rounds=2, delta=1e-5, accountant=accountant
    )
    assert Round.objects.for_tenant(core).get(pk=rounds[1].pk).epsilon_spent == expected
    if accountant == "rdp":
        ledger = dp_accounting.rdp.RdpAccountant()
        ledger.compose(dp_accounting.GaussianDpEvent(5.0), 2)
        assert expected == ledger.get_epsilon(1e-5)


def test_an_enrolled_population_is_accounted_at_cohort_over_population(core):
    job = fl_job(
        core,
        **{**DP, "dp_noise_multiplier": 1.0, "dp_sampling": "enrolled", "dp_population": 1000},
    )
    (first,) = _rounds(job, [RoundStatus.CLOSED])
    fl_privacy_record(round=first)

    state = fl_privacy_state(job=job)
    assert state.sampling_probability == 0.01
    assert state.epsilon_spent == epsilon_spent(
        noise_multiplier=1.0, sampling_probability=0.01, rounds=1, delta=1e-5
    )
    assert job.fl_config.dp_rounds_allowed == PrivacyBudget(
        epsilon=3.0, delta=1e-5, noise_multiplier=1.0, sampling_probability=0.01
    ).max_rounds(limit=50)  # the planned rounds cap it


def test_a_failed_round_spends_nothing(core):
    job = fl_job(core, **DP)
    rounds = _rounds(job, [RoundStatus.CLOSED, RoundStatus.FAILED, RoundStatus.CLOSED])
    for round_ in rounds:
        fl_privacy_record(round=round_)

    one, two = (
        epsilon_spent(noise_multiplier=5.0, sampling_probability=1.0, rounds=n, delta=1e-5)
        for n in (1, 2)
    )
    assert [r.epsilon_spent for r in Round.objects.for_tenant(core).filter(job=job)] == [
        one,
        one,
        two,
    ]
    state = fl_privacy_state(job=job)
    assert (state.rounds_spending, state.epsilon_spent, state.rounds_left_in_budget) == (2, two, 9)


# ----------------------------------------------------------------------------- admission


def test_admission_admits_the_last_round_in_budget_and_refuses_the_next(core):
    job = fl_job(core, **DP)
    assert job.fl_config.dp_rounds_allowed == 11
    _rounds(job, [RoundStatus.CLOSED] * 9 + [RoundStatus.FAILED, RoundStatus.CLOSED])

    fl_privacy_admit(job=job, round_number=12)  # the 11th spending round: ε ≈ 2.97 ≤ 3

    Round.objects.create(tenant=core, job=job, number=12, status=RoundStatus.OPEN)
    with pytest.raises(ValidationError) as excinfo:
        fl_privacy_admit(job=job, round_number=13)
    assert excinfo.value.messages == [
        "The privacy budget is spent: ε = 2.97 of 3 (δ = 1e-05) after 11 rounds; round 13 would "
        "reach ε = 3.12. The budget allows 11 rounds."
    ]


def test_admission_refuses_a_distributed_job_past_its_skellam_budget(core):
    # given a distributed job whose Skellam budget allows N rounds, N of them spent
    job = fl_job(core, **DP, secure_aggregation=True, dp_mode="distributed")
    allowed = job.fl_config.dp_rounds_allowed
    assert 0 < allowed < job.fl_config.rounds
    _rounds(job, [RoundStatus.CLOSED] * (allowed - 1) + [RoundStatus.FAILED, RoundStatus.CLOSED])
    # then round N + 1 is refused, with the Skellam ε spent and the ε it would reach
    with pytest.raises(ValidationError) as excinfo:
        fl_privacy_admit(job=job, round_number=allowed + 2)
    message = excinfo.value.messages[0]
    assert f"after {allowed} rounds; round {allowed + 2} would reach" in message
    scale = distributed_scale(n_clients=10, clip_norm=1.0, noise_multiplier=5.0, noise_shares=1)
    release = skellam_release(clip_norm=1.0, scale=scale, dimension=650, variance=(5 * scale) ** 2)
    assert f"ε = {skellam_epsilon([(release, allowed)], delta=1e-5):.3g} of 3" in message


def test_a_job_without_dp_is_always_admitted_by_the_budget(core):
    job = fl_job(core)
    _rounds(job, [RoundStatus.CLOSED] * 20)
    fl_privacy_admit(job=job, round_number=21)
    assert fl_privacy_state(job=job) is None


def test_resuming_a_job_whose_budget_is_spent_is_refused_with_no_side_effects(core):
    job = fl_job(core, **DP)
    services.job_control(tenant=core, job_id=job.pk, role=Role.OWNER, action="pause")
    _rounds(job, [RoundStatus.CLOSED] * 11)
    events = JobEvent.objects.for_tenant(core).count()

    with pytest.raises(ValidationError, match="The privacy budget is spent") as excinfo:
        services.job_control(tenant=core, job_id=job.pk, role=Role.OWNER, action="resume")

    assert "after 11 rounds; round 12 would reach" in excinfo.value.messages[0]
    job.refresh_from_db()
    assert (job.status, job.status_reason) == (JobStatus.PAUSED, "Paused by the tenant")
    assert JobEvent.objects.for_tenant(core).count() == events
    assert Round.objects.for_tenant(core).filter(job=job).count() == 11


def test_starting_a_draft_whose_budget_is_spent_is_refused_with_no_side_effects(core):
    job = services.fl_job_create(
        tenant=core,
        actor=None,
        actor_role=Role.OWNER,
        spec=services.FlJobSpec(name="draft", model_kernel="logreg", model_sizes=[64, 10], **DP),
        start=False,
    )
    _rounds(job, [RoundStatus.CLOSED] * 11)
    events = JobEvent.objects.for_tenant(core).count()

    with pytest.raises(ValidationError, match="round 12 would reach ε = 3.12"):
        services.job_control(tenant=core, job_id=job.pk, role=Role.OWNER, action="start")

    job.refresh_from_db()
    assert (job.status, job.started_at) == (JobStatus.DRAFT, None)
    assert JobEvent.objects.for_tenant(core).count() == events


# ----------------------------------------------------------------------------- form and page

FORM = {
    "name": "private training",
    "model_kernel": "logreg",
    "model_sizes": "64, 10",
    "data_source": "public_partition",
    "dataset": "digits",
    "partition": "iid",
    "partition_clients": "100",
    "rounds": "20",
    "cohort_size": "10",
    "over_selection": "1.0",
    "round_deadline_seconds": "120",
    "local_epochs": "1",
    "batch_size": "10",
    "learning_rate": "0.05",
    "client_optimizer": "sgd",
    "momentum": "0",
    "proximal_mu": "0",
    "server_strategy": "fedavg",
    "strategy_options": "{}",
    "compression": "none",
    "mode": "sync",
}


def test_the_form_sets_privacy_and_the_page_shows_epsilon_being_spent(owner_client, core):
    page = owner_client.get("/jobs/new/fl/").content.decode()
    assert 'data-testid="privacy-section"' in page
    assert "accounted at q = 1" in page
    assert "each client adds a Skellam share before masking" in page

    response = owner_client.post(
        "/jobs/new/fl/",
        {
            **FORM,
            "secure_aggregation": "on",
            "secagg_threshold_fraction": "0.6",
            "differential_privacy": "on",
            "dp_epsilon": "3",
            "dp_delta": "1e-5",
            "dp_noise_multiplier": "5",
            "dp_clip_norm": "0.5",
            "dp_accountant": "rdp",
            "dp_mode": "distributed",
            "dp_sampling": "volunteer",
        },
    )
    assert response.status_code == 302
    job = Job.objects.for_tenant(core).get()
    config = job.fl_config
    notice = owner_client.get(response["Location"]).content.decode()
    assert "Its privacy budget allows 11 of the 20 planned rounds" in notice
    assert (config.dp_epsilon, config.dp_delta, config.dp_mode, config.dp_clip_norm) == (
        3.0,
        1e-5,
        "distributed",
        0.5,
    )
    assert (config.secagg_threshold_fraction, config.secagg_min_survivors) == (0.6, 10)

    first, second = _rounds(job, [RoundStatus.CLOSED, RoundStatus.OPEN])
    fl_privacy_record(round=first)
    detail = owner_client.get(response["Location"]).content.decode()
    assert 'data-testid="epsilon-per-round"' in detail
    assert "ε = 3.0, δ = 1e-05 (RDP)" in detail
    assert "0.795 of 3 after 2 rounds" in detail
    assert "9 more rounds fit the budget (it allows 11 of the 20 planned" in detail
    assert "k = 8 neighbours of 10 invited, threshold t = 5" in detail
    assert "What is not." in detail
    assert "distributed Skellam noise: each client adds an integer share" in detail
    assert fl_privacy_state(job=job).mechanism == "skellam"


def test_the_form_shows_privacy_errors_by_field(owner_client, core):
    response = owner_client.post(
        "/jobs/new/fl/",
        {**FORM, "differential_privacy": "on", "dp_noise_multiplier": "5", "dp_clip_norm": "1"},
    )
    assert response.status_code == 400
    assert "Give the budget ε in (0, 100]." in response.content.decode()
    assert not Job.objects.for_tenant(core).exists()


# ----------------------------------------------------------------------------- API


def test_the_api_round_trips_the_privacy_settings_and_the_budget(api_client, core):
    response = api_client.post(
        "/api/v1/fl-jobs/",
        {
            "name": "api private",
            "model_kernel": "logreg",
            "model_sizes": [64, 10],
            "partition": "iid",
            "secure_aggregation": True,
            "secagg_min_survivors": 8,
            **DP,
            "dp_accountant": "rdp",
            "dp_sampling": "enrolled",
            "dp_population": 500,
            "dp_adaptive_clipping": True,
            "dp_target_quantile": 0.7,
            "cohort_size": 200,
            "dp_noise_multiplier": 2.0,
            "dp_delta": 1e-6,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    config = body["fl_config"]
    assert {k: config[k] for k in ("dp_epsilon", "dp_delta", "dp_population")} == {
        "dp_epsilon": 3.0,
        "dp_delta": 1e-6,
        "dp_population": 500,
    }
    assert (config["dp_adaptive_clipping"], config["dp_target_quantile"]) == (True, 0.7)
    assert (config["secagg_threshold_fraction"], config["secagg_min_survivors"]) == (0.5, 8)
    privacy = body["privacy"]
    allowed = PrivacyBudget(
        epsilon=3.0, delta=1e-6, noise_multiplier=2.0, sampling_probability=0.4
    ).max_rounds(limit=50)  # the planned rounds cap it
    assert privacy["sampling_probability"] == 0.4
    assert (privacy["mode"], privacy["mechanism"]) == ("central", "gaussian")
    assert (privacy["epsilon_spent"], privacy["rounds_allowed"]) == (0.0, allowed)
    assert privacy["rounds_left_in_budget"] == allowed

    job = Job.objects.for_tenant(Job.objects.unscoped().get(pk=body["id"]).tenant).get()
    (first,) = _rounds(job, [RoundStatus.CLOSED])
    fl_privacy_record(round=first)
    read = api_client.get(f"/api/v1/fl-jobs/{body['id']}/").json()["privacy"]
    assert read["rounds"] == [
        {"number": 1, "status": "closed", "epsilon_spent": read["epsilon_spent"]}
    ]
    assert read["epsilon_spent"] == epsilon_spent(
        noise_multiplier=2.0, sampling_probability=0.4, rounds=1, delta=1e-6
    )
    assert read["rounds_left_in_budget"] == allowed - 1
    generic = api_client.get(f"/api/v1/jobs/{body['id']}/").json()
    assert generic["fl_config"]["dp_sampling"] == "enrolled"


def test_the_api_refuses_a_spent_first_round_with_a_keyed_error(api_client, core):
    response = api_client.post(
        "/api/v1/fl-jobs/",
        {
            "name": "too tight",
            "model_kernel": "logreg",
            "model_sizes": [64, 10],
            **DP,
            "dp_epsilon": 0.1,
        },
        format="json",
    )
    assert response.status_code == 400
    assert "the budget allows 0 rounds" in response.json()["error"]["fields"]["dp_epsilon"][0]


def test_the_schema_documents_the_privacy_fields():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    components = schema["components"]["schemas"]
    assert {"dp_epsilon", "dp_sampling", "secagg_min_survivors"} <= set(
        components["FlJobCreateInputRequest"]["properties"]
    )
    assert "privacy" in components["FlJobOutput"]["properties"]
    assert {"epsilon_spent", "rounds_left_in_budget", "rounds"} <= set(
        components["PrivacyOutput"]["properties"]
    )
    assert "/api/v1/fl-jobs/{job_id}/" in schema["paths"]


def test_another_tenant_cannot_see_the_privacy_data(api_client, core, other_tenant, other_owner):
    _tier(other_tenant, Tier.CORE, other_owner)
    theirs = fl_job(other_tenant, **DP)
    (first,) = _rounds(theirs, [RoundStatus.CLOSED])
    fl_privacy_record(round=first)

    assert api_client.get(f"/api/v1/fl-jobs/{theirs.pk}/").status_code == 404
    assert api_client.get(f"/api/v1/jobs/{theirs.pk}/").status_code == 404
    listing = api_client.get("/api/v1/fl-jobs/").json()
    assert listing["count"] == 0
