"""Training's world: tina, a trainer in acme (beside alice, bob and charlie), keys; acme's
trainable models and datasets for the jobs' tests."""

import hashlib
from dataclasses import dataclass

import pytest

from accounts.models import Permission
from accounts.services import apikey_create
from ai.models import AIModel, Dataset, ModelKind, Trainer, TrainerKind
from orgs.models import Role
from tests.factories import AIModelFactory, MembershipFactory, ModelLinkFactory, UserFactory
from tests.training.helpers import trainer_group

MANAGE = [Permission.READ, Permission.PROXY, Permission.MANAGE]


@pytest.fixture
def tina(acme):
    """A member of acme with the trainer role."""
    user = UserFactory(username="tina")
    user.groups.add(trainer_group())
    MembershipFactory(user=user, organisation=acme, role=Role.MEMBER)
    return user


@pytest.fixture
def staff(db):
    return UserFactory(username="stella", is_staff=True)


@pytest.fixture
def training_keys(alice, bob, charlie, tina, staff):
    """A manage key for each persona, by persona name."""
    users = {"alice": alice, "bob": bob, "charlie": charlie, "tina": tina, "staff": staff}
    return {
        name: apikey_create(user=user, name=f"{name}-manage", permissions=MANAGE)[1]
        for name, user in users.items()
    }


LINE = b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n'


def dataset_make(*, name: str, organisation=None, created_by=None) -> Dataset:
    content = LINE * 3
    return Dataset.objects.create(
        name=name,
        organisation=organisation,
        created_by=created_by,
        content=content,
        bytes=len(content),
        lines=3,
        sha256=hashlib.sha256(content).hexdigest(),
    )


def trainer_role(*users) -> None:
    group = trainer_group()
    for user in users:
        user.groups.add(group)


@dataclass
class TrainingWorld:
    base: AIModel
    untrainable: AIModel
    embed: AIModel
    charlie_model: AIModel
    dataset: Dataset
    charlie_dataset: Dataset
    trainer: Trainer
    alice_key: str
    bob_key: str
    charlie_key: str
    read_key: str


@pytest.fixture
def enqueued(monkeypatch):
    """The job ids handed to the training task (no worker runs in these tests)."""
    from ai.tasks import training_run_task

    calls: list[int] = []
    monkeypatch.setattr(training_run_task, "delay", calls.append)
    return calls


@pytest.fixture
def training(db, alice, bob, charlie, acme, enqueued):
    """alice (acme's owner) and charlie (an outsider) have the trainer role; bob does not."""
    trainer_role(alice, charlie)
    base = AIModelFactory(name="acme-base", kind=ModelKind.CHAT, train_path="/weights/acme-base")
    untrainable = AIModelFactory(name="acme-remote", kind=ModelKind.CHAT)
    embed = AIModelFactory(name="acme-embed", kind=ModelKind.EMBEDDING, train_path="/weights/e")
    for model in (base, untrainable, embed):
        ModelLinkFactory(model=model, organisation=acme)
    charlie_model = AIModelFactory(name="charlie-base", train_path="/weights/charlie")
    ModelLinkFactory(model=charlie_model, user=charlie)
    Trainer.objects.update(is_default=False)
    trainer, _ = Trainer.objects.update_or_create(
        name="builtin",
        defaults={"kind": TrainerKind.BUILTIN, "is_default": True, "is_active": True},
    )
    manage = ["read", "proxy", "manage"]
    return TrainingWorld(
        base=base,
        untrainable=untrainable,
        embed=embed,
        charlie_model=charlie_model,
        dataset=dataset_make(name="support.jsonl", organisation=acme, created_by=alice),
        charlie_dataset=dataset_make(name="charlie.jsonl", created_by=charlie),
        trainer=trainer,
        alice_key=apikey_create(user=alice, name="alice", permissions=manage)[1],
        bob_key=apikey_create(user=bob, name="bob", permissions=manage)[1],
        charlie_key=apikey_create(user=charlie, name="charlie", permissions=manage)[1],
        read_key=apikey_create(user=alice, name="ro", permissions=["read"])[1],
    )
