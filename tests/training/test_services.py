"""services.job_start and job_cancel called directly: trainers, owners, keys, events, quotas."""

from datetime import UTC, datetime, timedelta

import pytest

from accounts.selectors import key_info_of
from accounts.services import apikey_create
from ai.models import Trainer, TrainerKind, TrainingJob, TrainingStatus
from ai.training import selectors, services
from orgs.models import Role
from panel.errors import (
    InvalidRequest,
    JobFinished,
    ModelNotFound,
    NotFound,
    PermissionDenied,
)
from tests.factories import (
    MembershipFactory,
    ModelLinkFactory,
    OrganisationFactory,
    UpstreamFactory,
)


def _start(training, user, **fields):
    arguments = {"base_model": "acme-base", "dataset": training.dataset.public_id, "epochs": 1}
    arguments.update(fields)
    return services.job_start(user=user, api_key=arguments.pop("api_key", None), **arguments)


def test_it_keeps_the_validation_dataset_and_refuses_an_invisible_one(training, alice):
    job = _start(training, alice, validation_dataset="support.jsonl")
    assert job.validation_dataset == training.dataset
    with pytest.raises(NotFound) as caught:
        _start(training, alice, validation_dataset=training.charlie_dataset.public_id)
    assert caught.value.param == "validation_dataset"


def test_it_copies_the_kind_of_a_named_command_trainer(training, alice):
    Trainer.objects.create(name="script", kind=TrainerKind.COMMAND, command=["t", "{config}"])
    job = _start(training, alice, trainer="script", base_model="acme-remote")
    assert (job.trainer.name, job.trainer_kind) == ("script", "command")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"kind": TrainerKind.COMMAND, "command": []}, "no command"),
        ({"kind": TrainerKind.UPSTREAM}, "no upstream"),
        ({"kind": TrainerKind.COMMAND, "command": ["t"], "is_active": False}, "no active trainer"),
    ],
)
def test_it_says_why_a_trainer_cannot_be_used(training, alice, fields, says):
    Trainer.objects.create(name="other", **fields)
    with pytest.raises(InvalidRequest) as caught:
        _start(training, alice, trainer="other")
    assert says in caught.value.message and caught.value.param == "trainer"


def test_an_upstream_trainer_with_its_upstream_needs_no_local_weights(training, alice):
    upstream = UpstreamFactory(model=training.untrainable)
    Trainer.objects.create(name="remote", kind=TrainerKind.UPSTREAM, upstream=upstream)
    job = _start(training, alice, trainer="remote", base_model="acme-remote")
    assert job.trainer_kind == "upstream"


def test_without_a_default_trainer_it_asks_for_one(training, alice):
    Trainer.objects.update(is_default=False)
    with pytest.raises(InvalidRequest, match="No default trainer"):
        _start(training, alice)


def test_a_key_of_another_organisation_may_not_start_for_acme(training, alice, acme):
    other = OrganisationFactory(name="Other")
    MembershipFactory(user=alice, organisation=other, role=Role.OWNER)
    ModelLinkFactory(model=training.base, organisation=other)
    key, _ = apikey_create(user=alice, name="other", organisation=other, permissions=["manage"])
    with pytest.raises(PermissionDenied):
        _start(training, alice, organisation="acme", api_key=key_info_of(key))
    assert not TrainingJob.objects.exists()


def test_a_key_limited_to_other_models_cannot_train_this_one(training, alice):
    key, _ = apikey_create(user=alice, name="narrow", allowed_models=[training.untrainable])
    with pytest.raises(ModelNotFound):
        _start(training, alice, api_key=key_info_of(key))


def test_a_job_without_an_organisation_is_its_creators(training, charlie, bob):
    job = _start(
        training, charlie, base_model="charlie-base", dataset=training.charlie_dataset.public_id
    )
    assert job.organisation is None
    assert selectors.job_get_for_user(user=charlie, public_id=job.public_id) == job
    with pytest.raises(NotFound):
        selectors.job_get_for_user(user=bob, public_id=job.public_id)


def test_staff_see_every_job_and_may_cancel_it(training, alice, superuser):
    job = _start(training, alice)
    assert selectors.job_get_for_user(user=superuser, public_id=job.public_id) == job
    assert services.job_cancel(job=job, user=superuser).status == "cancelled"


def test_a_trainer_of_another_organisation_may_not_cancel(training, alice, charlie, acme):
    job = _start(training, alice)
    with pytest.raises(PermissionDenied):
        services.job_cancel(job=job, user=charlie)
    assert TrainingJob.objects.get().status == "queued"


def test_a_second_cancel_of_a_running_job_adds_no_event(training, alice):
    job = _start(training, alice)
    TrainingJob.objects.update(status=TrainingStatus.RUNNING)
    services.job_cancel(job=job, user=alice)
    first = TrainingJob.objects.get().cancel_requested_at
    services.job_cancel(job=job, user=alice)
    assert TrainingJob.objects.get().cancel_requested_at == first
    assert job.events.filter(message="Cancel requested.").count() == 1


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_of_any_finished_job_is_refused(training, alice, status):
    job = _start(training, alice)
    TrainingJob.objects.update(status=status)
    with pytest.raises(JobFinished):
        services.job_cancel(job=job)


def test_auto_values_are_left_to_the_trainer():
    checked = services.hyperparameters_check(
        {"batch_size": "auto", "learning_rate_multiplier": "auto", "lora_r": 8}
    )
    assert checked == {"lora_r": 8}
    with pytest.raises(InvalidRequest):
        services.hyperparameters_check({"lora_r": "auto"})
    with pytest.raises(InvalidRequest):
        services.hyperparameters_check({"lora_dropout": True})
    with pytest.raises(InvalidRequest):
        services.hyperparameters_check({"learning_rate": float("nan")})


def test_minutes_used_adds_this_months_finished_and_running_time(acme):
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    common = {"organisation": acme, "base_model_name": "m", "trainer_kind": "builtin"}
    TrainingJob.objects.create(**common, status="succeeded", finished_at=now, seconds_used=120)
    TrainingJob.objects.create(
        **common, status="failed", finished_at=now - timedelta(days=10), seconds_used=99999
    )
    TrainingJob.objects.create(**common, status="running", started_at=now - timedelta(minutes=3))
    assert services.minutes_used(acme, now) == pytest.approx(5)
    assert services.month_start(now) == datetime(2026, 12, 1, tzinfo=UTC)


def test_the_event_page_walks_back_from_an_event(training, alice):
    job = _start(training, alice)
    for n in range(4):
        services.event_add(job=job, kind="log", message=f"line {n}")
    page, more = selectors.job_events(job=job, limit=2)
    assert [e.message for e in page] == ["line 3", "line 2"] and more
    rest, more = selectors.job_events(job=job, after=selectors.event_public_id(page[-1]), limit=9)
    assert [e.message for e in rest] == ["line 1", "line 0", "Job queued."] and not more
    with pytest.raises(InvalidRequest):
        selectors.job_events(job=job, after="ftevent-x")


@pytest.mark.django_db(transaction=True)
def test_the_jobs_quota_holds_when_starts_race(training, alice, acme):
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from django.db import connection

    from panel.errors import TrainingQuotaExceeded

    acme.max_training_jobs = 2
    acme.save()
    barrier = Barrier(6)

    def start(_):
        barrier.wait()
        try:
            _start(training, alice)
            return "started"
        except TrainingQuotaExceeded:
            return "refused"
        finally:
            connection.close()

    with ThreadPoolExecutor(6) as pool:
        outcomes = sorted(pool.map(start, range(6)))
    assert outcomes == ["refused"] * 4 + ["started"] * 2
    assert TrainingJob.objects.filter(organisation=acme).count() == 2
