"""POST /api/v1/ai/models/deploy with a trained artifact: an upstream model id or a local instance."""

import httpx
import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from accounts.models import Permission
from accounts.roles import MODEL_MANAGER
from accounts.services import apikey_create
from ai.instances import backends
from ai.models import AIModel, Instance, ModelLink, TrainedArtifact, TrainingJob
from ai.models.training import TrainerKind
from fakeupstream import auth_fingerprint
from tests.factories import AIModelFactory, OrganisationFactory, UpstreamFactory, UserFactory

DEPLOY = "/api/v1/ai/models/deploy"
KEY = "sk-trainer-upstream-secret-77d1"
MANAGE = [Permission.READ, Permission.PROXY, Permission.MANAGE]


@pytest.fixture
def staff(db):
    return UserFactory(username="stella", is_staff=True)


@pytest.fixture
def manager(db):
    """Mallory, a model manager of no organisation."""
    user = UserFactory(username="mallory")
    user.groups.add(Group.objects.get(name=MODEL_MANAGER))
    return user


def client_of(user) -> APIClient:
    client = APIClient()
    key = apikey_create(user=user, name=f"{user.username}-manage", permissions=MANAGE)[1]
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def make_artifact(organisation, creator, *, fmt="upstream", status="succeeded", **fields):
    base = AIModelFactory(name=f"base-{TrainingJob.objects.count()}", train_path="/models/base")
    job = TrainingJob.objects.create(
        organisation=organisation,
        created_by=creator,
        base_model=base,
        base_model_name=base.name,
        trainer_kind=TrainerKind.UPSTREAM if fmt == "upstream" else TrainerKind.BUILTIN,
        status=status,
    )
    if status != "succeeded":
        return job
    defaults = {"name": f"{base.name}:ft-acme", "node": "local", "path": "/data/ft/output"}
    return TrainedArtifact.objects.create(
        job=job, organisation=organisation, format=fmt, **{**defaults, **fields}
    )


@pytest.fixture
def upstream_artifact(acme, alice, fake_upstream):
    trainer_upstream = UpstreamFactory(
        name="openai-ish", base_url=fake_upstream.base_url(), api_key=KEY
    )
    return make_artifact(
        acme, alice, upstream=trainer_upstream, upstream_model_id="ft:fake-chat:acme:ftjob-1"
    )


def test_it_deploys_an_upstream_artifact_that_org_members_then_call(
    transactional_db, asgi_server, fake_upstream, upstream_artifact, staff, acme, bob, charlie
):
    fake_upstream.clear()

    response = client_of(staff).post(
        DEPLOY, {"artifact": upstream_artifact.public_id}, format="json"
    )

    assert response.status_code == 201, response.json()
    assert response.json()["name"] == upstream_artifact.name
    assert KEY not in response.content.decode()
    model = AIModel.objects.get(name=upstream_artifact.name)
    (upstream,) = model.upstreams.all()
    assert upstream.base_url == fake_upstream.base_url() and upstream.api_key == KEY
    assert upstream.provider_model_id == "ft:fake-chat:acme:ftjob-1"
    assert ModelLink.objects.get(model=model).organisation == acme
    upstream_artifact.refresh_from_db()
    assert upstream_artifact.deployed_model == model
    bob_key = apikey_create(user=bob, name="bob", organisation=acme)[1]
    reply = httpx.post(
        f"{asgi_server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {bob_key}"},
        json={"model": model.name, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    (sent,) = [r for r in fake_upstream.requests() if r["path"].endswith("/chat/completions")]
    assert sent["json"]["model"] == "ft:fake-chat:acme:ftjob-1"
    assert sent["authorization"]["sha256_prefix"] == auth_fingerprint(KEY)
    mine = httpx.get(
        f"{asgi_server.url}/api/ai/my-models", headers={"Authorization": f"Bearer {bob_key}"}
    )
    assert model.name in [item["model"]["modelName"] for item in mine.json()]
    charlie_key = apikey_create(user=charlie, name="charlie")[1]
    theirs = httpx.get(
        f"{asgi_server.url}/api/ai/my-models", headers={"Authorization": f"Bearer {charlie_key}"}
    )
    assert theirs.status_code == 200
    assert model.name not in [item["model"]["modelName"] for item in theirs.json()]


def test_a_second_deploy_of_the_same_artifact_is_a_409(upstream_artifact, staff):
    client = client_of(staff)
    assert client.post(DEPLOY, {"artifact": upstream_artifact.public_id}).status_code == 201

    again = client.post(DEPLOY, {"job": upstream_artifact.job.public_id, "name": "other"})

    assert again.status_code == 409
    assert again.json()["error"]["code"] == "artifact_deployed"
    assert not AIModel.objects.filter(name="other").exists()


def test_a_model_manager_outside_the_organisation_gets_a_404(upstream_artifact, manager):
    response = client_of(manager).post(DEPLOY, {"artifact": upstream_artifact.public_id})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert not AIModel.objects.filter(name=upstream_artifact.name).exists()


def test_a_model_manager_of_the_organisation_deploys_it(upstream_artifact, manager, acme):
    from tests.factories import MembershipFactory

    MembershipFactory(user=manager, organisation=acme)

    response = client_of(manager).post(DEPLOY, {"artifact": upstream_artifact.public_id})

    assert response.status_code == 201


def test_a_member_without_the_model_manager_role_may_not_deploy(upstream_artifact, bob):
    response = client_of(bob).post(DEPLOY, {"artifact": upstream_artifact.public_id})

    assert response.status_code == 403
    assert not AIModel.objects.filter(name=upstream_artifact.name).exists()


def test_a_failed_job_has_nothing_to_deploy(acme, alice, staff):
    job = make_artifact(acme, alice, status="failed")

    response = client_of(staff).post(DEPLOY, {"job": job.public_id})

    assert response.status_code == 409
    assert response.json()["error"] == {
        "message": f"The job '{job.public_id}' has no trained artifact to deploy: it is failed.",
        "type": "invalid_request_error",
        "param": "job",
        "code": "no_artifact",
    }


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"artifact": "ftart-nope"}, 404, "artifact"),
        ({"job": "ftjob-nope"}, 404, "job"),
        ({"artifact": "ftart-a", "job": "ftjob-b"}, 400, "artifact"),
        ({"artifact": "ftart-a", "upstreams": []}, 400, "upstreams"),
    ],
)
def test_bad_deploys_are_refused_in_the_envelope(staff, body, status, param):
    response = client_of(staff).post(DEPLOY, body, format="json")

    assert response.status_code == status
    assert response.json()["error"]["param"] == param


def test_a_name_in_use_is_a_400_and_adds_nothing_to_that_model(upstream_artifact, staff):
    taken = AIModelFactory(name="taken")

    response = client_of(staff).post(
        DEPLOY, {"artifact": upstream_artifact.public_id, "name": "taken"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "name"
    assert taken.upstreams.count() == 0
    upstream_artifact.refresh_from_db()
    assert upstream_artifact.deployed_model is None


def test_it_links_to_an_organisation_given_by_staff(upstream_artifact, staff):
    other = OrganisationFactory(slug="other")

    response = client_of(staff).post(
        DEPLOY, {"artifact": upstream_artifact.public_id, "organisation": "other"}
    )

    assert response.status_code == 201
    assert ModelLink.objects.get(model__name=upstream_artifact.name).organisation == other


def test_a_member_may_not_link_it_to_an_organisation_of_which_they_are_not_one(
    upstream_artifact, manager, acme
):
    from tests.factories import MembershipFactory

    MembershipFactory(user=manager, organisation=acme)
    OrganisationFactory(slug="other")

    response = client_of(manager).post(
        DEPLOY, {"artifact": upstream_artifact.public_id, "organisation": "other"}
    )

    assert response.status_code == 404
    assert response.json()["error"]["param"] == "organisation"


def test_a_lora_artifact_is_a_vllm_instance_serving_the_adapter_over_its_base(acme, alice, staff):
    artifact = make_artifact(acme, alice, fmt="hf_lora", path="/data/ft/adapter")

    response = client_of(staff).post(DEPLOY, {"artifact": artifact.public_id})

    assert response.status_code == 201, response.json()
    model = AIModel.objects.get(name=artifact.name)
    (upstream,) = model.upstreams.select_related("instance")
    instance = upstream.instance
    assert instance.backend == "vllm" and instance.node == "local"
    assert instance.on_demand_start and instance.organisation == acme
    argv = backends.command_line(instance, host="127.0.0.1", port=8001)
    assert argv[:3] == ["vllm", "serve", "/models/base"]
    assert argv[-3:] == ["--enable-lora", "--lora-modules", f"{artifact.name}=/data/ft/adapter"]
    # The gateway asks the server for the adapter, not its base.
    assert upstream.provider_model_id == artifact.name
    assert ModelLink.objects.get(model=model).organisation == acme


def test_full_weights_are_a_vllm_instance_of_the_output_and_gguf_a_llama_cpp_one(
    acme, alice, staff
):
    full = make_artifact(acme, alice, fmt="hf", path="/data/ft/full")
    gguf = make_artifact(acme, alice, fmt="gguf", path="/data/ft/model.gguf", name="ft-gguf")
    client = client_of(staff)

    assert client.post(DEPLOY, {"artifact": full.public_id}).status_code == 201
    assert client.post(DEPLOY, {"artifact": gguf.public_id}).status_code == 201

    vllm = Instance.objects.get(upstreams__model__name=full.name)
    argv = backends.command_line(vllm, host="127.0.0.1", port=8001)
    assert argv[:3] == ["vllm", "serve", "/data/ft/full"] and "--enable-lora" not in argv
    assert vllm.upstreams.get().provider_model_id == vllm.name
    llama = Instance.objects.get(upstreams__model__name="ft-gguf")
    argv = backends.command_line(llama, host="127.0.0.1", port=8002)
    assert argv[:3] == ["llama-server", "-m", "/data/ft/model.gguf"]


def test_a_lora_artifact_whose_base_has_no_weights_path_is_refused(acme, alice, staff):
    artifact = make_artifact(acme, alice, fmt="hf_lora")
    artifact.job.base_model.delete()

    response = client_of(staff).post(DEPLOY, {"artifact": artifact.public_id})

    assert response.status_code == 400
    assert "base model" in response.json()["error"]["message"]
    assert not AIModel.objects.filter(name=artifact.name).exists()
    assert not Instance.objects.exists()


def test_an_artifact_without_an_organisation_is_linked_to_its_creator(alice, staff):
    artifact = make_artifact(None, alice, fmt="gguf", path="/data/ft/x.gguf")

    response = client_of(staff).post(DEPLOY, {"artifact": artifact.public_id})

    assert response.status_code == 201
    assert ModelLink.objects.get(model__name=artifact.name).user == alice


def test_an_adapter_of_a_high_rank_raises_vllms_rank_limit(acme, alice, staff):
    artifact = make_artifact(acme, alice, fmt="hf_lora", path="/data/ft/adapter")
    TrainingJob.objects.filter(pk=artifact.job_id).update(hyperparameters={"lora_r": 24})

    assert client_of(staff).post(DEPLOY, {"artifact": artifact.public_id}).status_code == 201

    instance = Instance.objects.get(upstreams__model__name=artifact.name)
    assert instance.extra_args == [
        "--enable-lora",
        "--max-lora-rank",
        "32",
        "--lora-modules",
        f"{artifact.name}=/data/ft/adapter",
    ]
    assert instance.upstreams.get().provider_model_id == artifact.name
