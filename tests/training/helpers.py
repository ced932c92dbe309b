"""Helpers for the training tests: the trainer group, valid JSONL lines to build files from."""

import json
from importlib import import_module

from django.contrib.auth.models import Group
from django.contrib.auth.models import Permission as AuthPermission

from accounts.roles import TRAINER


def chat_line(question: str = "What is 2+2?", answer: str = "4", **extra) -> str:
    """One valid training example (OpenAI's chat fine-tuning format) as a JSONL line."""
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]
    return json.dumps({"messages": messages, **extra})


def jsonl(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def trainer_group() -> Group:
    """The trainer group with the migrations' grants, whole: a test that flushed the database
    (a transactional test) took the group away, and a group made again must not lack any."""
    group, _ = Group.objects.get_or_create(name=TRAINER)
    grants = import_module("ai.migrations.0016_training_roles").TRAINER_GRANTS
    codenames = [f"{action}_{model}" for model, actions in grants for action in actions]
    group.permissions.add(
        *AuthPermission.objects.filter(content_type__app_label="ai", codename__in=codenames)
    )
    return group
