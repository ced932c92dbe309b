"""The runner (ai/training/runner.py): a job run by a worker, from claim to artifact."""

import json
import subprocess
import sys
import types

import pytest
from django.conf import settings as django_settings

from ai.models import (
    TrainedArtifact,
    TrainerKind,
    TrainingEvent,
    TrainingEventKind,
    TrainingJob,
    TrainingStatus,
)
from ai.training import runner, trainers
from tests.factories import OrganisationFactory, UpstreamFactory
from tests.training import runner_world as world

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def training_dir(settings, tmp_path):
    settings.TRAINING_OUTPUT_DIR = tmp_path / "training"
    settings.TRAINING_HEARTBEAT_INTERVAL = 0.2
    return settings.TRAINING_OUTPUT_DIR


def _statuses(job) -> list[str]:
    events = TrainingEvent.objects.filter(job=job, kind=TrainingEventKind.STATUS)
    return [event.data["status"] for event in events]


def test_it_runs_a_command_trainer_to_success_and_registers_its_artifact(training_dir):
    org = OrganisationFactory()
    job = world.job("ok", "--steps", "4", organisation=org)

    runner.job_run(job.pk, worker="celery@gpu-1")

    job.refresh_from_db()
    assert job.status == TrainingStatus.SUCCEEDED
    assert job.error == ""
    assert (job.step, job.total_steps, job.epoch) == (4, 4, 1.0)
    assert job.metrics == {"loss": 0.5}
    assert job.worker == "celery@gpu-1"
    assert job.pid > 0
    assert job.started_at <= job.finished_at
    assert job.seconds_used > 0
    output = training_dir / job.public_id / "output"
    artifact = TrainedArtifact.objects.get(job=job)
    assert artifact.organisation == org
    assert artifact.format == "hf_lora"
    assert artifact.path == str(output)
    assert artifact.node == django_settings.INSTANCE_NODE
    assert artifact.bytes == sum(p.stat().st_size for p in output.iterdir())
    assert artifact.name == f"{job.base_model_name}:ft-{job.public_id[6:14]}"
    assert _statuses(job) == ["running", "succeeded"]
    metrics = TrainingEvent.objects.filter(job=job, kind=TrainingEventKind.METRICS)
    assert [(e.step, e.data) for e in metrics] == [(s, {"loss": 2.0 / s}) for s in (1, 2, 3, 4)]
    logs = TrainingEvent.objects.filter(job=job, kind=TrainingEventKind.LOG)
    assert "loaded 2 examples" in [e.message for e in logs]
    # The dataset's copy goes once it is trained on; the output stays.
    assert not (training_dir / job.public_id / "train.jsonl").exists()


def test_the_trainer_reads_the_config_the_contract_names(training_dir):
    job = world.job(
        "ok",
        trainer_fields={"options": {"learning_rate": 0.1, "lora_r": 8}},
        hyperparameters={"learning_rate": 0.002},
        epochs=3,
        validation_dataset=world.dataset(),
    )
    job.base_model.train_path = "/models/tiny"
    job.base_model.save()

    runner.job_run(job.pk)

    directory = training_dir / job.public_id
    seen = json.loads((directory / "output" / "config-seen.json").read_text())
    assert seen == {
        "job_id": job.public_id,
        "base_model": job.base_model_name,
        "base_model_path": "/models/tiny",
        "dataset_path": str(directory / "train.jsonl"),
        "validation_dataset_path": str(directory / "validation.jsonl"),
        "output_dir": str(directory / "output"),
        "epochs": 3,
        "hyperparameters": {"learning_rate": 0.002, "lora_r": 8},
        "examples": 2,
    }


def test_a_suffix_names_the_artifact():
    job = world.job("ok", suffix="support-bot")

    runner.job_run(job.pk)

    assert TrainedArtifact.objects.get(job=job).name == f"{job.base_model_name}:ft-support-bot"


def test_the_trainer_gets_none_of_the_workers_secrets_but_its_own_environment(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://switchboard:hunter2@db/switchboard")
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@redis:6379/0")
    monkeypatch.setenv("ADMIN_PASSWORD", "hunter2")
    monkeypatch.setenv("SECRET_KEY", "a-secret-key")
    monkeypatch.setenv("FIELD_ENCRYPTION_KEY", "a-fernet-key")
    job = world.job("env", trainer_fields={"environment": {"TRAINER_FLAG": "on"}})

    runner.job_run(job.pk)

    line = TrainingEvent.objects.get(job=job, message__startswith="env ").message
    assert json.loads(line[4:]) == {
        "ADMIN_PASSWORD": False,
        "DATABASE_URL": False,
        "DJANGO_SETTINGS_MODULE": False,
        "FIELD_ENCRYPTION_KEY": False,
        "PATH": True,
        "REDIS_URL": False,
        "SECRET_KEY": False,
        "TRAINER_FLAG": "on",
    }
    assert TrainingJob.objects.get(pk=job.pk).status == TrainingStatus.SUCCEEDED


def test_the_builtin_trainer_runs_the_contracts_command_from_this_checkout(tmp_path):
    job = world.job()
    job.trainer.kind = job.trainer_kind = TrainerKind.BUILTIN

    argv = trainers.command(job, tmp_path / "config.json")
    env = trainers.environment(job)

    assert argv == [
        sys.executable, "-m", "ai.training.causal_lm", "--config", str(tmp_path / "config.json")
    ]  # fmt: skip
    # The module is importable where the trainer starts (the job's directory).
    probe = subprocess.run(
        [sys.executable, "-c", "import ai.training.protocol"], cwd=tmp_path, env=env, check=False
    )
    assert probe.returncode == 0
    assert env["PYTHONPATH"].split(":")[0] == str(django_settings.BASE_DIR)


def test_a_builtin_job_for_a_model_with_no_train_path_fails_with_the_reason(training_dir):
    job = world.job()
    TrainingJob.objects.filter(pk=job.pk).update(trainer_kind=TrainerKind.BUILTIN)

    runner.job_run(job.pk)

    job.refresh_from_db()
    assert job.status == TrainingStatus.FAILED
    assert job.error == (
        f"the base model {job.base_model_name} has no train_path: "
        "the built-in trainer cannot fine-tune it"
    )
    assert not TrainedArtifact.objects.exists()
    assert not (training_dir / job.public_id).exists()


@pytest.mark.parametrize("command", [[], ["python", 3], [""], "python train.py", {"argv": ["x"]}])
def test_a_command_trainer_without_a_command_fails_the_job_clearly(command):
    job = world.job(trainer_fields={"command": command})

    runner.job_run(job.pk)

    job.refresh_from_db()
    assert job.status == TrainingStatus.FAILED
    assert job.error == "the trainer's command is empty (or not a list of strings)"
    assert _statuses(job) == ["running", "failed"]


def test_a_job_whose_trainer_was_deleted_fails_the_job():
    job = world.job()
    job.trainer.delete()

    runner.job_run(job.pk)

    job.refresh_from_db()
    assert (job.status, job.error) == (TrainingStatus.FAILED, "the job's trainer was deleted")


def test_a_trainer_program_that_is_not_there_fails_the_job(tmp_path):
    job = world.job(trainer_fields={"command": [str(tmp_path / "no-such-trainer"), "{config}"]})

    runner.job_run(job.pk)

    job.refresh_from_db()
    assert job.status == TrainingStatus.FAILED
    assert job.error.startswith(f"the trainer could not start: {tmp_path / 'no-such-trainer'}")


def test_a_job_whose_dataset_was_deleted_fails_the_job():
    job = world.job()
    job.dataset.delete()

    runner.job_run(job.pk)

    job.refresh_from_db()
    assert (job.status, job.error) == (TrainingStatus.FAILED, "the job's dataset was deleted")


@pytest.mark.parametrize(
    "status",
    [
        TrainingStatus.RUNNING,
        TrainingStatus.SUCCEEDED,
        TrainingStatus.FAILED,
        TrainingStatus.CANCELLED,
    ],
)
def test_a_job_that_is_not_queued_is_left_alone(status, monkeypatch):
    job = world.job(status=status, worker="celery@other")

    def no_trainer(*args, **kwargs):
        raise AssertionError("a trainer was started")

    monkeypatch.setattr(runner.subprocess, "Popen", no_trainer)
    runner.job_run(job.pk, worker="celery@redelivered")

    job.refresh_from_db()
    assert (job.status, job.worker, job.started_at) == (status, "celery@other", None)
    assert not TrainingEvent.objects.filter(job=job).exists()


def test_a_redelivered_task_does_not_run_a_job_again():
    job = world.job()
    runner.job_run(job.pk)
    finished_at = TrainingJob.objects.get(pk=job.pk).finished_at

    runner.job_run(job.pk)

    assert TrainingJob.objects.get(pk=job.pk).finished_at == finished_at
    assert TrainedArtifact.objects.filter(job=job).count() == 1
    assert _statuses(job) == ["running", "succeeded"]


def test_a_job_that_does_not_exist_is_nothing_to_run():
    runner.job_run(987654)

    assert not TrainingEvent.objects.exists()


# --- An upstream trainer: the runner dispatches to ai.training.upstream (task 16d). -------


@pytest.fixture
def fake_upstream_module(monkeypatch):
    """Stands in for ai.training.upstream until it lands: records its calls and answers
    what the test sets."""
    module = types.ModuleType("ai.training.upstream")
    module.Outcome = types.SimpleNamespace
    module.calls = []

    def job_run_upstream(job, should_stop):
        module.calls.append(job.public_id)
        return module.answer(job, should_stop)

    module.job_run_upstream = job_run_upstream
    monkeypatch.setitem(sys.modules, "ai.training.upstream", module)
    import ai.training

    monkeypatch.setattr(ai.training, "upstream", module, raising=False)
    return module


def _upstream_job(**fields):
    upstream = UpstreamFactory()
    return world.job(
        trainer_fields={"kind": TrainerKind.UPSTREAM, "command": [], "upstream": upstream},
        **fields,
    )


def test_an_upstream_job_succeeds_with_the_upstreams_model_as_its_artifact(fake_upstream_module):
    fake_upstream_module.answer = lambda job, should_stop: fake_upstream_module.Outcome(
        status="succeeded", error="", fine_tuned_model="ft:gpt-4o-mini:acme::abc123"
    )
    job = _upstream_job(suffix="acme")

    runner.job_run(job.pk)

    job.refresh_from_db()
    assert fake_upstream_module.calls == [job.public_id]
    assert job.status == TrainingStatus.SUCCEEDED
    artifact = TrainedArtifact.objects.get(job=job)
    assert artifact.format == "upstream"
    assert artifact.upstream == job.trainer.upstream
    assert artifact.upstream_model_id == "ft:gpt-4o-mini:acme::abc123"
    assert artifact.name == f"{job.base_model_name}:ft-acme"
    assert artifact.path == ""


def test_an_upstream_job_that_failed_there_fails_here_with_its_reason(fake_upstream_module):
    fake_upstream_module.answer = lambda job, should_stop: fake_upstream_module.Outcome(
        status="failed", error="invalid training file", fine_tuned_model=None
    )
    job = _upstream_job()

    runner.job_run(job.pk)

    job.refresh_from_db()
    assert (job.status, job.error) == (TrainingStatus.FAILED, "invalid training file")
    assert not TrainedArtifact.objects.exists()


def test_an_upstream_trainer_that_raises_fails_the_job_without_its_message(
    fake_upstream_module, caplog
):
    def explode(job, should_stop):
        raise RuntimeError("401 from https://api.example.com key sk-live-hunter2")

    fake_upstream_module.answer = explode
    job = _upstream_job()

    runner.job_run(job.pk)

    job.refresh_from_db()
    assert (job.status, job.error) == (
        TrainingStatus.FAILED,
        "the upstream trainer stopped on an error",
    )
    assert "hunter2" not in json.dumps(list(TrainingEvent.objects.values("message", "data")))


def test_a_cancelled_upstream_job_is_told_to_stop_and_ends_cancelled(
    fake_upstream_module, settings
):
    settings.TRAINING_HEARTBEAT_INTERVAL = 0.05

    def poll_until_told(job, should_stop):
        world.wait_for(
            lambda: TrainingJob.objects.filter(pk=job.pk, status="running").exists(), 10, "running"
        )
        TrainingJob.objects.filter(pk=job.pk).update(cancel_requested_at=job.created_at)
        reason = world.wait_for(should_stop, 10, "should_stop to say cancelled")
        fake_upstream_module.reason = reason
        return fake_upstream_module.Outcome(status="cancelled", error="", fine_tuned_model=None)

    fake_upstream_module.answer = poll_until_told
    job = _upstream_job()

    runner.job_run(job.pk)

    assert fake_upstream_module.reason == "cancelled"
    job.refresh_from_db()
    assert job.status == TrainingStatus.CANCELLED
    assert job.heartbeat_at > job.started_at
    assert not TrainedArtifact.objects.exists()


def test_an_upstream_job_past_its_timeout_is_told_to_stop(fake_upstream_module):
    def poll_until_told(job, should_stop):
        reason = world.wait_for(should_stop, 10, "should_stop to say timeout")
        return fake_upstream_module.Outcome(
            status="failed", error=f"stopped: {reason}", fine_tuned_model=None
        )

    fake_upstream_module.answer = poll_until_told
    job = _upstream_job()
    job.trainer.timeout_seconds = 1
    job.trainer.save()

    runner.job_run(job.pk)

    job.refresh_from_db()
    assert (job.status, job.error) == (TrainingStatus.FAILED, "stopped: timeout")
