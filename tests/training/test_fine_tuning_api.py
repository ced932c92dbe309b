"""OpenAI's /v1/fine_tuning/jobs through the OpenAI SDK against the running server."""

import openai
import pytest
from django.utils import timezone

from ai.models import TrainingEvent, TrainingJob, TrainingStatus

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sdk(training, asgi_server):
    def make(key=None, base="/v1"):
        return openai.OpenAI(
            base_url=f"{asgi_server.url}{base}", api_key=key or training.alice_key, max_retries=0
        )

    return make


def _create(sdk, training, **fields):
    arguments = {"model": "acme-base", "training_file": training.dataset.public_id, **fields}
    return sdk().fine_tuning.jobs.create(**arguments)


@pytest.mark.parametrize("base", ["/v1", "/api/v1", "/api/ai/openai/v1"])
def test_the_sdk_creates_a_job_under_every_base_url(sdk, training, enqueued, base):
    job = sdk(base=base).fine_tuning.jobs.create(
        model="acme-base",
        training_file=training.dataset.public_id,
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": "auto"},
        suffix="support",
        seed=7,
    )
    assert job.object == "fine_tuning.job" and job.id.startswith("ftjob-")
    assert (job.status, job.model, job.training_file) == (
        "queued",
        "acme-base",
        training.dataset.public_id,
    )
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == "auto"
    assert (job.seed, job.user_provided_suffix, job.organization_id) == (7, "support", "acme")
    assert job.fine_tuned_model is None and job.error is None
    row = TrainingJob.objects.get(public_id=job.id)
    assert (row.epochs, row.hyperparameters) == (2, {"batch_size": 4, "seed": 7})
    assert enqueued == [row.pk]


def test_the_sdk_takes_the_hyperparameters_inside_method(sdk, training):
    job = _create(
        sdk,
        training,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 5}}},
    )
    assert job.hyperparameters.n_epochs == 5
    assert TrainingJob.objects.get().epochs == 5


def test_the_sdk_lists_retrieves_and_pages_jobs(sdk, training):
    first, second = _create(sdk, training), _create(sdk, training)
    page = sdk().fine_tuning.jobs.list(limit=1)
    assert [job.id for job in page.data] == [second.id] and page.has_more
    assert [job.id for job in sdk().fine_tuning.jobs.list()] == [second.id, first.id]
    assert sdk(training.bob_key).fine_tuning.jobs.retrieve(first.id).id == first.id


def test_the_status_maps_onto_openais(sdk, training):
    job = _create(sdk, training)
    for status in TrainingStatus.values:
        TrainingJob.objects.update(status=status, error="boom" if status == "failed" else "")
        seen = sdk().fine_tuning.jobs.retrieve(job.id)
        assert seen.status == status
        assert (seen.error is not None) == (status == "failed")
    assert seen.error is None
    TrainingJob.objects.update(status="failed", error="boom", finished_at=timezone.now())
    failed = sdk().fine_tuning.jobs.retrieve(job.id)
    assert failed.error.message == "boom" and failed.finished_at is not None


def test_the_sdk_cancels_and_lists_events_newest_first(sdk, training):
    job = _create(sdk, training)
    cancelled = sdk().fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    row = TrainingJob.objects.get()
    TrainingEvent.objects.create(job=row, kind="metrics", step=3, data={"loss": 1.5})
    events = sdk().fine_tuning.jobs.list_events(job.id)
    assert [e.object for e in events.data] == ["fine_tuning.job.event"] * 3
    assert events.data[0].type == "metrics" and events.data[0].data == {"loss": 1.5}
    assert "loss=1.5" in events.data[0].message
    assert [e.message for e in events.data[1:]] == ["Job cancelled.", "Job queued."]
    older = sdk().fine_tuning.jobs.list_events(job.id, after=events.data[0].id, limit=1)
    assert [e.message for e in older.data] == ["Job cancelled."] and older.has_more


def test_cancel_of_a_finished_job_is_a_409_for_the_sdk(sdk, training):
    job = _create(sdk, training)
    TrainingJob.objects.update(status="succeeded", finished_at=timezone.now())
    with pytest.raises(openai.ConflictError) as caught:
        sdk().fine_tuning.jobs.cancel(job.id)
    assert caught.value.body["code"] == "job_finished"


@pytest.mark.parametrize(
    ("fields", "error", "param"),
    [
        ({"model": "llama-9"}, openai.NotFoundError, "base_model"),
        ({"model": "charlie-base"}, openai.NotFoundError, "base_model"),
        ({"training_file": "file-nope"}, openai.NotFoundError, "dataset"),
        ({"hyperparameters": {"n_epochs": -2}}, openai.BadRequestError, "hyperparameters.n_epochs"),
        (
            {"hyperparameters": {"n_epochs": "3"}},
            openai.BadRequestError,
            "hyperparameters.n_epochs",
        ),
        (
            {"hyperparameters": {"learning_rate_multiplier": 0}},
            openai.BadRequestError,
            "hyperparameters.learning_rate_multiplier",
        ),
        ({"seed": -1}, openai.BadRequestError, "seed"),
        ({"method": {"type": "dpo"}}, openai.BadRequestError, "method.type"),
    ],
)
def test_bad_creates_answer_in_the_envelope(sdk, training, fields, error, param):
    with pytest.raises(error) as caught:
        _create(sdk, training, **fields)
    assert caught.value.body["param"] == param
    assert not TrainingJob.objects.exists()


def test_an_outsider_gets_404_on_every_job_route(sdk, training):
    job = _create(sdk, training)
    outsider = sdk(training.charlie_key).fine_tuning.jobs
    for call in (outsider.retrieve, outsider.cancel, outsider.list_events):
        with pytest.raises(openai.NotFoundError):
            call(job.id)
    assert outsider.list().data == []
    assert TrainingJob.objects.get().status == "queued"


def test_a_member_without_the_trainer_role_gets_403_on_create(sdk, training):
    with pytest.raises(openai.PermissionDeniedError):
        sdk(training.bob_key).fine_tuning.jobs.create(
            model="acme-base", training_file=training.dataset.public_id
        )
    assert not TrainingJob.objects.exists()


def test_the_concurrent_jobs_quota_is_a_429(sdk, training, acme):
    acme.max_training_jobs = 1
    acme.save()
    _create(sdk, training)
    with pytest.raises(openai.RateLimitError) as caught:
        _create(sdk, training)
    assert caught.value.body["code"] == "quota_exceeded"


def test_the_objects_match_openais_schema(training, asgi_server):
    import httpx

    from tests.openai_schema import validate

    headers = {"Authorization": f"Bearer {training.alice_key}"}
    base = f"{asgi_server.url}/v1/fine_tuning/jobs"
    created = httpx.post(
        base, headers=headers, json={"model": "acme-base", "training_file": "support.jsonl"}
    )
    assert created.status_code == 200
    validate(created.json(), "FineTuningJob")
    job = TrainingJob.objects.get()
    TrainingEvent.objects.create(job=job, kind="metrics", step=2, data={"loss": 0.5})
    TrainingEvent.objects.create(job=job, kind="log", level="warning", message="slow disk")
    TrainingJob.objects.update(status="failed", error="crashed", finished_at=timezone.now())
    validate(httpx.get(f"{base}/{job.public_id}", headers=headers).json(), "FineTuningJob")
    validate(httpx.get(base, headers=headers).json(), "ListPaginatedFineTuningJobsResponse")
    events = httpx.get(f"{base}/{job.public_id}/events", headers=headers).json()
    validate(events, "ListFineTuningJobEventsResponse")
    assert [e["level"] for e in events["data"]] == ["warn", "info", "info"]
