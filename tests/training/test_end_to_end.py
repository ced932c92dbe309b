"""Issue 16 as one piece: upload, start, run (the real runner), watch, cancel, deploy, call.

The parts' own tests mock each other (the API's the task, the deploy's the artifact);
here the live server takes the requests, ``runner.job_run`` runs the job as a worker
does, and what it wrote is what the status, the events and the deploy read. The
built-in trainer trains a tiny model built here (tests/training/tiny_lm.py) once.
"""

import io
import json
from pathlib import Path

import httpx
import openai
import pytest

from accounts.models import Permission
from accounts.services import apikey_create
from ai.instances import backends
from ai.models import (
    AIModel,
    Instance,
    TrainedArtifact,
    Trainer,
    TrainerKind,
    TrainingJob,
    TrainingStatus,
)
from ai.training import runner
from tests.factories import AIModelFactory, ModelLinkFactory, UpstreamFactory
from tests.servers import wait_for
from tests.training import runner_world as world
from tests.training.conftest import trainer_role

pytestmark = pytest.mark.django_db(transaction=True)

MANAGE = [Permission.READ, Permission.PROXY, Permission.MANAGE]
DEPLOY = "/api/v1/ai/models/deploy"
UPSTREAM_KEY = "sk-e2e-upstream-secret-5b1e"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("torch", reason="issue 16: the train extra (make install has it)")
    from tests.training import tiny_lm

    return tiny_lm.build(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(autouse=True)
def training_dir(settings, tmp_path):
    settings.TRAINING_OUTPUT_DIR = tmp_path / "training"
    settings.TRAINING_HEARTBEAT_INTERVAL = 0.2
    settings.TRAINING_UPSTREAM_POLL = 0.01
    return settings.TRAINING_OUTPUT_DIR


@pytest.fixture
def keys(acme, alice, bob, charlie, staff):
    """alice (acme's owner, trainer role) manages; bob (acme) and charlie (outsider) call."""
    trainer_role(alice)
    return {
        "alice": apikey_create(user=alice, name="alice", permissions=MANAGE)[1],
        "staff": apikey_create(user=staff, name="staff", permissions=MANAGE)[1],
        "bob": apikey_create(user=bob, name="bob", organisation=acme)[1],
        "charlie": apikey_create(user=charlie, name="charlie")[1],
        "charlie_manage": apikey_create(user=charlie, name="charlie-m", permissions=MANAGE)[1],
    }


class Api:
    def __init__(self, server, key: str) -> None:
        self.server, self.key = server, key

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.request(
            method, f"{self.server.url}{path}", headers=headers, timeout=30, **kwargs
        )

    def status(self, job_id: str) -> dict:
        response = self.request("GET", f"/api/v1/ai/training/{job_id}/status")
        assert response.status_code == 200, response.text
        return response.json()

    def cancel(self, job_id: str) -> httpx.Response:
        return self.request("POST", f"/api/v1/ai/training/{job_id}/cancel")

    def my_models(self) -> list[str]:
        response = self.request("GET", "/api/ai/my-models")
        assert response.status_code == 200, response.text
        return [item["model"]["modelName"] for item in response.json()]


def _default_trainer(**fields) -> Trainer:
    Trainer.objects.update(is_default=False)
    return Trainer.objects.create(is_default=True, is_active=True, **fields)


def _linked_model(organisation, **fields) -> AIModel:
    model = AIModelFactory(**fields)
    ModelLinkFactory(model=model, organisation=organisation)
    return model


def test_the_sdk_fine_tunes_a_local_model_that_staff_deploys_for_the_organisation(
    asgi_server, enqueued, keys, acme, tiny_model
):
    from tests.training.tiny_lm import FACTS, chat

    base = _linked_model(acme, name="tiny-chat", train_path=str(tiny_model))
    _default_trainer(
        name="builtin-e2e",
        kind=TrainerKind.BUILTIN,
        options={"device": "cpu", "batch_size": 2, "learning_rate": 0.01, "method": "lora"},
    )
    sdk = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=keys["alice"], max_retries=0)
    data = "".join(json.dumps(chat(t, c)) + "\n" for t, c in FACTS * 2).encode()

    uploaded = sdk.files.create(file=("facts.jsonl", io.BytesIO(data)), purpose="fine-tune")
    created = sdk.fine_tuning.jobs.create(
        model=base.name,
        training_file=uploaded.id,
        hyperparameters={"n_epochs": 2},
        suffix="e2e",
    )
    assert created.status == "queued" and created.organization_id == "acme"
    row = TrainingJob.objects.get(public_id=created.id)
    assert enqueued == [row.pk]

    runner.job_run(row.pk, worker="e2e-worker")

    job = sdk.fine_tuning.jobs.retrieve(created.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == "tiny-chat:ft-e2e" and job.finished_at is not None
    events = sdk.fine_tuning.jobs.list_events(created.id, limit=100).data
    losses = [e.data["loss"] for e in reversed(events) if e.type == "metrics"]
    # 16 examples, batch 2, 2 epochs: 16 steps, each a metrics line.
    assert len(losses) == 16, losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    alice = Api(asgi_server, keys["alice"])
    status = alice.status(created.id)
    assert status["status"] == "succeeded"
    assert status["progress"]["percent"] == 100.0
    assert status["progress"]["step"] == status["progress"]["total_steps"] == 16
    assert status["metrics"]["loss"] == pytest.approx(losses[-1])
    artifact = TrainedArtifact.objects.get(job=row)
    assert status["result"] == {
        "artifact_id": artifact.public_id,
        "name": "tiny-chat:ft-e2e",
        "format": "hf_lora",
    }
    assert (artifact.organisation, artifact.bytes > 0) == (acme, True)
    assert (Path(artifact.path) / "adapter_config.json").is_file()

    # Alice may not deploy (not a model manager); staff may.
    refused = alice.request("POST", DEPLOY, json={"artifact": artifact.public_id})
    assert refused.status_code == 403, refused.text
    deployed = Api(asgi_server, keys["staff"]).request(
        "POST", DEPLOY, json={"artifact": artifact.public_id}
    )
    assert deployed.status_code == 201, deployed.text
    assert deployed.json()["name"] == "tiny-chat:ft-e2e"
    instance = Instance.objects.get(upstreams__model__name="tiny-chat:ft-e2e")
    argv = backends.command_line(instance, host="127.0.0.1", port=8001)
    assert argv[:3] == ["vllm", "serve", str(tiny_model)]
    assert argv[-2:] == ["--lora-modules", f"tiny-chat:ft-e2e={artifact.path}"]
    assert "tiny-chat:ft-e2e" in Api(asgi_server, keys["bob"]).my_models()
    assert "tiny-chat:ft-e2e" not in Api(asgi_server, keys["charlie"]).my_models()


def test_an_upstream_trainer_started_by_seed_004_deploys_a_model_the_gateway_calls(
    asgi_server, fake_upstream, enqueued, keys, acme, alice
):
    fake_upstream.clear()
    base = _linked_model(acme, name="gpt-base")
    upstream = UpstreamFactory(
        model=base,
        name="openai-ish",
        base_url=fake_upstream.base_url(),
        api_key=UPSTREAM_KEY,
        provider_model_id="fake-chat-2025",
    )
    _default_trainer(name="upstream-e2e", kind=TrainerKind.UPSTREAM, upstream=upstream)
    dataset = world.dataset(organisation=acme, created_by=alice)
    api = Api(asgi_server, keys["alice"])

    started = api.request(
        "POST",
        "/api/v1/ai/training/start",
        json={"base_model": "gpt-base", "dataset": dataset.public_id, "epochs": 2},
    )

    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    assert started.json()["status_url"] == f"/api/v1/ai/training/{job_id}/status"
    row = TrainingJob.objects.get(public_id=job_id)
    assert enqueued == [row.pk] and row.trainer_kind == TrainerKind.UPSTREAM
    runner.job_run(row.pk, worker="e2e-worker")
    status = api.status(job_id)
    assert status["status"] == "succeeded", status["error"]
    artifact = TrainedArtifact.objects.get(job=row)
    fine_tuned = artifact.upstream_model_id
    assert fine_tuned.startswith("ft:fake-chat-2025:")
    assert status["result"]["artifact_id"] == artifact.public_id
    assert UPSTREAM_KEY not in json.dumps(status)

    deployed = Api(asgi_server, keys["staff"]).request(
        "POST", DEPLOY, json={"artifact": artifact.public_id}
    )
    assert deployed.status_code == 201, deployed.text
    name = deployed.json()["name"]
    assert UPSTREAM_KEY not in deployed.text
    fake_upstream.clear()
    bob = Api(asgi_server, keys["bob"])
    reply = bob.request(
        "POST",
        "/v1/chat/completions",
        json={"model": name, "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert reply.status_code == 200, reply.text
    (sent,) = [r for r in fake_upstream.requests() if r["path"].endswith("/chat/completions")]
    assert sent["json"]["model"] == fine_tuned
    assert name in bob.my_models()
    assert name not in Api(asgi_server, keys["charlie"]).my_models()


def test_a_cancel_through_the_api_stops_the_running_trainer_and_a_second_is_a_409(
    asgi_server, keys, acme, alice
):
    job = world.job("sleep", organisation=acme, created_by=alice)
    running = world.Running(job)
    try:
        pids = running.trainer_pids()
        api = Api(asgi_server, keys["alice"])
        assert api.status(job.public_id)["status"] == "running"

        cancelled = api.cancel(job.public_id)

        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json()["cancel_requested_at"] is not None
        running.join(timeout=10)
        assert wait_for(lambda: world.gone(*pids), 5, "the trainer's processes to go")
        status = api.status(job.public_id)
        assert (status["status"], status["result"]) == ("cancelled", None)
        assert status["finished_at"] is not None
        again = api.cancel(job.public_id)
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "job_finished"
        assert not TrainedArtifact.objects.exists()
        outsider = Api(asgi_server, keys["charlie_manage"])
        hidden = outsider.cancel(job.public_id)
        assert hidden.status_code == 404 and job.public_id in hidden.json()["error"]["message"]
    finally:
        world.kill_strays()


def test_a_trainer_that_crashes_at_step_0_fails_the_job_and_leaves_nothing_to_deploy(
    asgi_server, keys, acme, alice, training_dir
):
    job = world.job("crash", organisation=acme, created_by=alice)

    runner.job_run(job.pk, worker="e2e-worker")

    status = Api(asgi_server, keys["alice"]).status(job.public_id)
    assert status["status"] == TrainingStatus.FAILED
    assert status["error"] and "step 0" in status["error"]
    assert status["result"] is None
    assert not TrainedArtifact.objects.exists()
    assert not (training_dir / job.public_id).exists()
    deploy = Api(asgi_server, keys["staff"]).request("POST", DEPLOY, json={"job": job.public_id})
    assert deploy.status_code == 409, deploy.text
    assert deploy.json()["error"]["code"] == "no_artifact"
    assert deploy.json()["error"]["param"] == "job"
