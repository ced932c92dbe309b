"""An upstream trainer: the job forwarded to the fake upstream's fine-tuning API and polled."""

import json

import pytest

from ai.models import Dataset, Trainer, TrainingEvent, TrainingJob
from ai.models.training import TrainerKind
from ai.training import upstream as upstream_module
from ai.training.upstream import Outcome, job_run_upstream
from fakeupstream import auth_fingerprint
from tests.factories import AIModelFactory, UpstreamFactory

KEY = "sk-upstream-secret-4f9a2c"
LINES = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]},
]


@pytest.fixture(autouse=True)
def quick_polls(settings):
    settings.TRAINING_UPSTREAM_POLL = 0.01


@pytest.fixture
def make_job(db, acme, alice, fake_upstream):
    fake_upstream.clear()

    def make(*, key: str = KEY, options: dict | None = None, **faults) -> TrainingJob:
        base = AIModelFactory(name="gpt-base")
        upstream = UpstreamFactory(
            model=base,
            name="openai-ish",
            base_url=fake_upstream.base_url(**faults),
            api_key=key,
            provider_model_id="fake-base-2025",
        )
        trainer = Trainer.objects.create(
            name="upstream", kind=TrainerKind.UPSTREAM, upstream=upstream, options=options or {}
        )
        content = "".join(json.dumps(line) + "\n" for line in LINES).encode()
        dataset = Dataset.objects.create(
            organisation=acme,
            created_by=alice,
            name="chats.jsonl",
            content=content,
            bytes=len(content),
            lines=len(LINES),
            sha256="0" * 64,
        )
        return TrainingJob.objects.create(
            organisation=acme,
            created_by=alice,
            base_model=base,
            base_model_name=base.name,
            dataset=dataset,
            trainer=trainer,
            trainer_kind=TrainerKind.UPSTREAM,
            epochs=3,
            hyperparameters={"batch_size": 2, "lora_r": 8},
            suffix="acme",
        )

    return make


def never() -> None:
    return None


def requests_to(fake_upstream, method: str, tail: str) -> list[dict]:
    return [
        r for r in fake_upstream.requests() if r["method"] == method and r["path"].endswith(tail)
    ]


def test_it_trains_at_the_upstream_and_returns_the_fine_tuned_model(make_job, fake_upstream):
    job = make_job(ft_polls=3)

    outcome = job_run_upstream(job, never)

    job.refresh_from_db()
    assert outcome.status == "succeeded" and outcome.error == ""
    assert outcome.fine_tuned_model == f"ft:fake-base-2025:acme:{job.upstream_job_id}"
    assert job.upstream_job_id.startswith("ftjob-")
    (created,) = requests_to(fake_upstream, "POST", "/fine_tuning/jobs")
    assert created["json"]["model"] == "fake-base-2025"
    assert created["json"]["hyperparameters"] == {"n_epochs": 3, "batch_size": 2}
    assert created["json"]["suffix"] == "acme"
    (upload,) = requests_to(fake_upstream, "POST", "/files")
    assert upload["authorization"]["sha256_prefix"] == auth_fingerprint(KEY)
    assert job.step == 3 and job.total_steps == 3 and job.metrics["loss"] == 0.6667
    messages = list(job.events.exclude(kind="metrics").values_list("message", flat=True))
    assert "upstream: running" in messages and "upstream: succeeded" in messages
    assert "Step 2/3: training loss=1.0" in messages
    # Each upstream event is mirrored once, however often it is listed.
    assert len(messages) == len(set(messages))
    assert job.events.filter(kind="metrics").count() == 3


def test_it_uses_the_trainers_model_option_over_the_base_models_id(make_job, fake_upstream):
    job = make_job(options={"model": "other-base"})

    outcome = job_run_upstream(job, never)

    assert outcome.fine_tuned_model.startswith("ft:other-base:acme:")
    (created,) = requests_to(fake_upstream, "POST", "/fine_tuning/jobs")
    assert created["json"]["model"] == "other-base"


def test_it_fails_with_the_upstreams_reason_when_the_upstream_job_fails(make_job):
    outcome = job_run_upstream(make_job(ft_fail=True), never)

    assert outcome == Outcome(
        "failed",
        "The upstream job failed: fake upstream: the training file has too few examples",
    )


def test_it_fails_clearly_when_the_upstream_refuses_the_upload(make_job):
    job = make_job(status=401)

    outcome = job_run_upstream(job, never)

    job.refresh_from_db()
    assert outcome.status == "failed"
    assert "answered 401 to POST files" in outcome.error
    assert job.upstream_job_id == ""


def test_it_fails_clearly_when_the_upstream_cannot_be_reached(make_job):
    job = make_job()
    job.trainer.upstream.base_url = "http://127.0.0.1:9/v1"
    job.trainer.upstream.save()

    outcome = job_run_upstream(job, never)

    assert outcome.status == "failed"
    assert "could not be reached (POST files): ConnectError" in outcome.error


def test_it_never_repeats_the_upstreams_key_in_a_reason(make_job, monkeypatch):
    from ai.training import upstream

    def echoing(body):
        return f"Incorrect API key provided: {KEY}"

    monkeypatch.setattr(upstream, "_reason", echoing)
    outcome = job_run_upstream(make_job(status=401), never)

    assert outcome.status == "failed" and KEY not in outcome.error
    assert "[redacted]" in outcome.error
    assert not TrainingEvent.objects.filter(message__contains=KEY).exists()


def test_it_cancels_the_upstream_job_when_the_job_is_cancelled(make_job, fake_upstream):
    job = make_job(ft_polls=1000)
    polls = []

    def after_two_polls():
        polls.append(1)
        return "cancelled" if len(polls) > 3 else None

    outcome = job_run_upstream(job, after_two_polls)

    job.refresh_from_db()
    assert outcome == Outcome("cancelled")
    (cancel,) = requests_to(
        fake_upstream, "POST", f"/fine_tuning/jobs/{job.upstream_job_id}/cancel"
    )
    assert cancel["authorization"]["sha256_prefix"] == auth_fingerprint(KEY)


def test_a_timeout_fails_the_job_and_cancels_it_upstream(make_job, fake_upstream):
    job = make_job(ft_polls=1000)
    polls = []

    def timeout_later():
        polls.append(1)
        return "timeout" if len(polls) > 2 else None

    outcome = job_run_upstream(job, timeout_later)

    assert outcome.status == "failed" and "stopped (timeout)" in outcome.error
    assert requests_to(fake_upstream, "POST", "/cancel")


def test_a_job_without_an_upstream_fails_without_calling_anything(make_job, fake_upstream):
    job = make_job()
    job.trainer.upstream = None
    job.trainer.save()

    outcome = job_run_upstream(job, never)

    assert outcome.status == "failed" and "names no upstream" in outcome.error
    assert fake_upstream.requests() == []


def test_polls_that_keep_failing_fail_the_job_after_a_few_warnings(make_job):
    from fakeupstream import FakeUpstreamThread

    with FakeUpstreamThread() as vanishing:
        job = make_job()
        job.trainer.upstream.base_url = vanishing.base_url(ft_polls=1000)
        job.trainer.upstream.save()
        calls = []

        def stop_the_server_once_created():
            calls.append(1)
            if len(calls) == 1:  # the job exists upstream: the server goes away
                vanishing.stop()

        outcome = job_run_upstream(job, stop_the_server_once_created)

    assert outcome.status == "failed"
    assert "could not be reached (GET fine_tuning): ConnectError" in outcome.error
    warnings = job.events.filter(level="warning")
    assert warnings.count() == upstream_module.MAX_POLL_FAILURES - 1
