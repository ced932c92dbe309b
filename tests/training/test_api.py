"""Seed 004's training routes: start, status, cancel, list; bad input, roles and tenancy."""

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ai.models import TrainingEvent, TrainingJob, TrainingStatus

START = "/api/v1/ai/training/start"


def _call(client, method, path, key, body=None):
    kwargs = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    if body is not None:
        kwargs.update(data=body, content_type="application/json")
    return getattr(client, method)(path, **kwargs)


def _start(client, training, key=None, **fields):
    body = {"base_model": "acme-base", "dataset": training.dataset.public_id, "epochs": 3}
    body.update(fields)
    return _call(client, "post", START, key or training.alice_key, body)


def _error(response, status, code=None, param=None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def test_it_starts_a_job_queued_and_enqueues_it(
    client, training, acme, alice, enqueued, django_capture_on_commit_callbacks
):
    hyperparameters = {"learning_rate": 0.0002, "method": "lora", "batch_size": "auto"}
    with django_capture_on_commit_callbacks(execute=True):
        response = _start(client, training, hyperparameters=hyperparameters)
    assert response.status_code == 202
    body = response.json()
    job = TrainingJob.objects.get()
    assert body["id"] == job.public_id and body["id"].startswith("ftjob-")
    assert body["status"] == "queued"
    assert body["status_url"] == f"/api/v1/ai/training/{job.public_id}/status"
    assert body["progress"] == {"step": 0, "total_steps": None, "epoch": 0.0, "percent": 0.0}
    assert (job.organisation, job.created_by, job.epochs) == (acme, alice, 3)
    assert job.trainer_kind == "builtin" and job.base_model == training.base
    assert job.hyperparameters == {"learning_rate": 0.0002, "method": "lora"}
    assert enqueued == [job.pk]
    assert list(job.events.values_list("kind", "data")) == [("status", {"status": "queued"})]


def test_it_finds_the_dataset_by_its_name_too(client, training):
    response = _start(client, training, dataset="support.jsonl")
    assert response.status_code == 202
    assert response.json()["dataset"] == training.dataset.public_id


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"epochs": -1}, "epochs"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": 10**9}, "epochs"),
        ({"epochs": "3"}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"hyperparameters": []}, "hyperparameters"),
        ({"hyperparameters": {"learning_rate": -0.1}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"learning_rate": "fast"}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"batch_size": 0}}, "hyperparameters.batch_size"),
        ({"hyperparameters": {"batch_size": 2.5}}, "hyperparameters.batch_size"),
        ({"hyperparameters": {"method": "qlora"}}, "hyperparameters.method"),
        ({"hyperparameters": {"lora_dropout": 1}}, "hyperparameters.lora_dropout"),
        ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup"),
        ({"suffix": "has space"}, "suffix"),
        ({"suffix": 7}, "suffix"),
        ({"trainer": "nope"}, "trainer"),
        ({"base_model": 12}, "base_model"),
        ({"base_model": None}, "base_model"),
        ({"dataset": None}, "dataset"),
        ({"dataset": ["file-x"]}, "dataset"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_it_refuses_bad_input_naming_the_field(client, training, fields, param, enqueued):
    _error(_start(client, training, **fields), 400, "invalid_value", param)
    assert not TrainingJob.objects.exists() and enqueued == []


def test_a_body_without_the_required_fields_names_the_first(client, training):
    _error(_call(client, "post", START, training.alice_key, {}), 400, "invalid_value", "base_model")
    body = {"base_model": "acme-base"}
    _error(_call(client, "post", START, training.alice_key, body), 400, "invalid_value", "dataset")


def test_it_answers_404_for_an_unknown_base_model(client, training):
    error = _error(_start(client, training, base_model="llama-9"), 404, "model_not_found")
    assert error["param"] == "base_model"
    assert (
        "acme-base" in error["available_models"] and "charlie-base" not in error["available_models"]
    )


def test_it_answers_404_for_a_model_the_caller_may_not_use(client, training):
    _error(_start(client, training, base_model="charlie-base"), 404, "model_not_found")
    assert not TrainingJob.objects.exists()


def test_it_refuses_a_model_that_is_not_a_chat_model(client, training):
    _error(_start(client, training, base_model="acme-embed"), 400, "invalid_model_type")


def test_it_refuses_an_inactive_model_as_unknown(client, training):
    training.base.is_active = False
    training.base.save()
    _error(_start(client, training), 404, "model_not_found")


def test_it_says_why_the_trainer_cannot_train_the_model(client, training):
    error = _error(_start(client, training, base_model="acme-remote"), 400, "invalid_value")
    assert "train_path" in error["message"] and error["param"] == "trainer"


def test_it_refuses_a_dataset_of_another_tenant(client, training):
    _error(_start(client, training, dataset=training.charlie_dataset.public_id), 404, "not_found")


def test_a_member_without_the_trainer_role_may_not_start(client, training):
    _error(_start(client, training, key=training.bob_key), 403, "permission_denied")
    assert not TrainingJob.objects.exists()


def test_a_key_without_manage_may_neither_start_nor_read(client, training):
    _error(_start(client, training, key=training.read_key), 403, "insufficient_permissions")
    job_id = _start(client, training).json()["id"]
    status = _call(client, "get", f"/api/v1/ai/training/{job_id}/status", training.read_key)
    _error(status, 403, "insufficient_permissions")


def test_a_trainer_may_not_start_for_an_organisation_not_theirs(client, training):
    response = _start(
        client,
        training,
        key=training.charlie_key,
        base_model="charlie-base",
        dataset=training.charlie_dataset.public_id,
        organisation="acme",
    )
    _error(response, 404, "not_found", "organisation")


def test_the_concurrent_jobs_quota_refuses_with_429(client, training, acme):
    acme.max_training_jobs = 1
    acme.save()
    assert _start(client, training).status_code == 202
    error = _error(_start(client, training), 429, "quota_exceeded")
    assert "limit (1)" in error["message"] and error["type"] == "rate_limit_error"
    assert TrainingJob.objects.count() == 1


def test_a_finished_job_frees_its_place_in_the_quota(client, training, acme):
    acme.max_training_jobs = 1
    acme.save()
    _start(client, training)
    TrainingJob.objects.update(status=TrainingStatus.FAILED, finished_at=timezone.now())
    assert _start(client, training).status_code == 202


def test_the_monthly_minutes_quota_counts_finished_and_running_time(client, training, acme):
    acme.training_minutes_per_month = 10
    acme.save()
    _start(client, training)
    now = timezone.now()
    job = TrainingJob.objects.get()
    job.status, job.started_at = TrainingStatus.RUNNING, now - timezone.timedelta(minutes=4)
    job.save()
    # 4 minutes running, plus 5 of a job finished this month: under 10.
    TrainingJob.objects.create(
        organisation=acme,
        base_model_name="x",
        trainer_kind="builtin",
        status=TrainingStatus.SUCCEEDED,
        finished_at=now,
        seconds_used=300,
    )
    assert _start(client, training).status_code == 202
    TrainingJob.objects.filter(status=TrainingStatus.SUCCEEDED).update(seconds_used=400)
    error = _error(_start(client, training), 429, "quota_exceeded")
    assert "10 training minutes" in error["message"]


def test_time_used_in_an_earlier_month_does_not_count(client, training, acme):
    acme.training_minutes_per_month = 1
    acme.save()
    earlier = timezone.now().replace(day=1) - timezone.timedelta(days=2)
    TrainingJob.objects.create(
        organisation=acme,
        base_model_name="x",
        trainer_kind="builtin",
        status=TrainingStatus.SUCCEEDED,
        finished_at=earlier,
        seconds_used=9999,
    )
    assert _start(client, training).status_code == 202


def test_status_shows_progress_metrics_and_result(client, training, bob):
    job_id = _start(client, training).json()["id"]
    job = TrainingJob.objects.get(public_id=job_id)
    job.status, job.step, job.total_steps, job.epoch = TrainingStatus.RUNNING, 30, 120, 0.75
    job.metrics, job.started_at = {"loss": 1.25}, timezone.now()
    job.save()
    response = _call(client, "get", f"/api/v1/ai/training/{job_id}/status", training.bob_key)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "running" and body["metrics"] == {"loss": 1.25}
    assert body["progress"] == {"step": 30, "total_steps": 120, "epoch": 0.75, "percent": 25.0}
    assert body["started_at"] and body["finished_at"] is None and body["result"] is None


def test_status_of_a_succeeded_job_names_its_artifact(client, training):
    from ai.models import TrainedArtifact

    job_id = _start(client, training).json()["id"]
    job = TrainingJob.objects.get(public_id=job_id)
    job.status, job.finished_at = TrainingStatus.SUCCEEDED, timezone.now()
    job.save()
    artifact = TrainedArtifact.objects.create(job=job, name="acme-base:ft-x", format="hf_lora")
    body = _call(client, "get", f"/api/v1/ai/training/{job_id}/status", training.alice_key).json()
    assert body["result"] == {
        "artifact_id": artifact.public_id,
        "name": "acme-base:ft-x",
        "format": "hf_lora",
    }


def test_an_outsider_sees_nothing(client, training):
    job_id = _start(client, training).json()["id"]
    for method, path in (
        ("get", f"/api/v1/ai/training/{job_id}/status"),
        ("post", f"/api/v1/ai/training/{job_id}/cancel"),
    ):
        _error(_call(client, method, path, training.charlie_key), 404, "not_found")
    listed = _call(client, "get", "/api/v1/ai/training", training.charlie_key).json()
    assert listed["data"] == []
    assert TrainingJob.objects.get().status == "queued"


def test_cancel_of_a_queued_job_cancels_it_at_once(client, training):
    job_id = _start(client, training).json()["id"]
    response = _call(client, "post", f"/api/v1/ai/training/{job_id}/cancel", training.alice_key)
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    job = TrainingJob.objects.get()
    assert job.status == "cancelled" and job.finished_at is not None
    assert job.events.filter(kind="status", data={"status": "cancelled"}).exists()


def test_cancel_of_a_running_job_asks_its_runner(client, training):
    job_id = _start(client, training).json()["id"]
    TrainingJob.objects.update(status=TrainingStatus.RUNNING, started_at=timezone.now())
    response = _call(client, "post", f"/api/v1/ai/training/{job_id}/cancel", training.alice_key)
    assert response.status_code == 202
    assert response.json()["status"] == "running"
    assert response.json()["cancel_requested_at"] is not None
    assert TrainingJob.objects.get().cancel_requested_at is not None


def test_cancel_of_a_finished_job_is_409(client, training):
    job_id = _start(client, training).json()["id"]
    TrainingJob.objects.update(status=TrainingStatus.SUCCEEDED, finished_at=timezone.now())
    events = TrainingEvent.objects.count()
    response = _call(client, "post", f"/api/v1/ai/training/{job_id}/cancel", training.alice_key)
    error = _error(response, 409, "job_finished")
    assert "already succeeded" in error["message"]
    assert TrainingEvent.objects.count() == events


def test_a_member_without_the_role_may_read_but_not_cancel(client, training):
    job_id = _start(client, training).json()["id"]
    path = f"/api/v1/ai/training/{job_id}"
    assert _call(client, "get", f"{path}/status", training.bob_key).status_code == 200
    _error(_call(client, "post", f"{path}/cancel", training.bob_key), 403, "permission_denied")
    assert TrainingJob.objects.get().status == "queued"


def test_the_list_shows_the_callers_jobs_newest_first(client, training):
    first = _start(client, training).json()["id"]
    second = _start(client, training).json()["id"]
    listed = _call(client, "get", "/api/v1/ai/training?limit=1", training.bob_key).json()
    assert [job["id"] for job in listed["data"]] == [second] and listed["has_more"]
    page = _call(client, "get", f"/api/v1/ai/training?after={second}", training.bob_key).json()
    assert [job["id"] for job in page["data"]] == [first] and not page["has_more"]


def test_unknown_job_ids_and_bad_limits_answer_in_the_envelope(client, training):
    _error(_call(client, "get", "/api/v1/ai/training/ftjob-nope/status", training.alice_key), 404)
    _error(
        _call(client, "get", "/api/v1/ai/training?limit=0", training.alice_key), 400, None, "limit"
    )
    _error(_call(client, "get", "/api/v1/ai/training", "sb-wrong"), 401)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
START_KEYS = st.sampled_from(
    ["base_model", "dataset", "epochs", "hyperparameters", "trainer", "suffix", "organisation"]
)
OPENAI_KEYS = st.sampled_from(
    ["model", "training_file", "validation_file", "hyperparameters", "suffix", "seed", "method"]
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    start=st.dictionaries(START_KEYS, JSON, max_size=4),
    openai=st.dictionaries(OPENAI_KEYS, JSON, max_size=4),
)
def test_no_body_makes_a_start_fail_with_a_500(client, training, start, openai):
    for path, body in ((START, start), ("/v1/fine_tuning/jobs", openai)):
        response = _call(client, "post", path, training.alice_key, body)
        assert response.status_code in (200, 202, 400, 403, 404, 429), response.content
        if response.status_code >= 400:
            assert set(response.json()["error"]) >= {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/ai/training/ftjob-%00/status",
        "/api/v1/ai/training/%E2%80%A8/status",
        "/api/v1/ai/training?after=ftjob-%00",
        "/api/v1/ai/training?limit=%C2%B2",
        "/v1/fine_tuning/jobs/ftjob-x/events?after=ftevent-%C2%B2",
        "/v1/fine_tuning/jobs/ftjob-x/events?after=ftevent-99999999999999999999999",
    ],
)
def test_odd_ids_and_numbers_answer_400_or_404(client, training, path):
    job_id = _start(client, training).json()["id"]
    response = _call(client, "get", path.replace("ftjob-x", job_id), training.alice_key)
    assert response.status_code in (400, 404), response.content
    assert response.json()["error"]["code"] in ("invalid_value", "not_found")


def test_a_dataset_name_with_a_nul_is_refused(client, training):
    _error(_start(client, training, dataset="a\0b"), 400, "invalid_value", "dataset")


def test_the_list_costs_the_same_queries_with_more_jobs(
    client, training, acme, assert_fixed_queries
):
    from ai.models import TrainedArtifact

    def add_rows():
        for _ in range(2):
            job = TrainingJob.objects.create(
                organisation=acme,
                base_model_name="acme-base",
                dataset=training.dataset,
                validation_dataset=training.dataset,
                trainer=training.trainer,
                trainer_kind="builtin",
                status=TrainingStatus.SUCCEEDED,
            )
            TrainedArtifact.objects.create(job=job, name="acme-base:ft-x", format="hf_lora")

    def listed():
        response = _call(client, "get", "/api/v1/ai/training?limit=100", training.bob_key)
        return len(response.json()["data"])

    assert_fixed_queries(2, listed, add_rows)
