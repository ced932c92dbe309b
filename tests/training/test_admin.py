"""The admin's Training jobs and Trainers pages: list, detail, loss chart, log, cancel, secrets."""

import pytest
from django.urls import reverse
from django.utils import timezone

from ai.models import Trainer, TrainingEvent, TrainingJob, TrainingStatus
from ai.training import services

SECRET = "hf-token-never-in-the-admin"


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


def _job(training, alice, acme, **fields):
    job = services.job_start(
        user=alice, api_key=None, base_model="acme-base", dataset=training.dataset.public_id
    )
    TrainingJob.objects.filter(pk=job.pk).update(**fields)
    job.refresh_from_db()
    return job


def test_the_list_shows_jobs_with_status_colours(admin_client, training, alice, acme):
    _job(training, alice, acme, status=TrainingStatus.RUNNING, step=5, total_steps=10)
    _job(training, alice, acme, status=TrainingStatus.FAILED, error="crashed")
    page = admin_client.get(reverse("admin:ai_trainingjob_changelist"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "#0969da" in html and "#cf222e" in html  # running blue, failed red
    assert "step 5/10 (50%)" in html
    filtered = admin_client.get(
        reverse("admin:ai_trainingjob_changelist") + "?status=failed&q=acme"
    )
    assert filtered.context["cl"].result_count == 1


def test_the_detail_shows_progress_the_loss_chart_and_the_log_tail(
    admin_client, training, alice, acme
):
    job = _job(training, alice, acme, status=TrainingStatus.RUNNING, metrics={"loss": 0.9})
    for step, loss in ((1, 2.5), (2, 1.7), (3, 0.9)):
        TrainingEvent.objects.create(job=job, kind="metrics", step=step, data={"loss": loss})
    for n in range(205):
        TrainingEvent.objects.create(job=job, kind="log", message=f"line <{n}>")
    page = admin_client.get(reverse("admin:ai_trainingjob_change", args=[job.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="loss-chart"' in html and "chart-4.6.1.umd.min.js" in html
    assert '"loss": [2.5, 1.7, 0.9]' in html
    assert "line &lt;204&gt;" in html and "line &lt;5&gt;" in html
    assert "line &lt;4&gt;" not in html  # only the last 200
    assert 'name="_cancel_job"' in html


def test_the_cancel_button_cancels_a_queued_job(admin_client, training, alice, acme):
    job = _job(training, alice, acme)
    url = reverse("admin:ai_trainingjob_change", args=[job.pk])
    response = admin_client.post(url, {"_cancel_job": "1"})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == "cancelled" and job.finished_at is not None


def test_the_cancel_action_asks_running_jobs_and_reports_finished_ones(
    admin_client, training, alice, acme
):
    running = _job(training, alice, acme, status=TrainingStatus.RUNNING)
    done = _job(training, alice, acme, status=TrainingStatus.SUCCEEDED, finished_at=timezone.now())
    response = admin_client.post(
        reverse("admin:ai_trainingjob_changelist"),
        {"action": "cancel", "_selected_action": [running.pk, done.pk]},
        follow=True,
    )
    text = response.content.decode()
    assert "already succeeded" in text and "asked to cancel 1 job" in text
    running.refresh_from_db()
    done.refresh_from_db()
    assert running.cancel_requested_at is not None and running.status == "running"
    assert done.status == "succeeded" and done.cancel_requested_at is None


def test_jobs_cannot_be_added_through_the_admin(admin_client, training):
    assert admin_client.get(reverse("admin:ai_trainingjob_add")).status_code == 403


def test_the_trainer_page_masks_secrets_and_keeps_them(admin_client, training):
    trainer = Trainer.objects.create(
        name="script",
        kind="command",
        command=["train", "{config}"],
        environment={"HF_TOKEN": SECRET, "LANG": "C"},
    )
    url = reverse("admin:ai_trainer_change", args=[trainer.pk])
    page = admin_client.get(url)
    assert page.status_code == 200 and SECRET not in page.content.decode()
    form = page.context["adminform"].form
    data = {
        "name": "script",
        "kind": "command",
        "command": '["train", "{config}"]',
        "environment": form["environment"].value(),
        "options": "{}",
        "timeout_seconds": "",
        "is_active": "on",
    }
    assert admin_client.post(url, data).status_code == 302
    trainer.refresh_from_db()
    assert trainer.environment == {"HF_TOKEN": SECRET, "LANG": "C"}


def test_the_trainer_form_refuses_an_upstream_trainer_without_upstream(admin_client, training):
    response = admin_client.post(
        reverse("admin:ai_trainer_add"),
        {
            "name": "remote",
            "kind": "upstream",
            "command": "[]",
            "environment": "{}",
            "options": "{}",
            "timeout_seconds": "",
            "is_active": "on",
        },
    )
    assert response.status_code == 200
    assert "needs its upstream" in response.content.decode()
    assert not Trainer.objects.filter(name="remote").exists()
