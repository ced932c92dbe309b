"""The trainer role's permissions on training (seed 004: admin or trainer start and cancel
jobs), and the built-in trainer as the default one."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

TRAINER_GRANTS = [
    ("dataset", ("view", "add", "delete")),
    ("trainingjob", ("view", "add", "change")),
    ("trainingevent", ("view",)),
    ("trainedartifact", ("view",)),
    ("trainer", ("view",)),
]


def forwards(apps, schema_editor):
    app_config = apps.get_app_config("ai")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="trainer")
    for model, actions in TRAINER_GRANTS:
        for action in actions:
            group.permissions.add(
                Permission.objects.get(content_type__app_label="ai", codename=f"{action}_{model}")
            )
    Trainer = apps.get_model("ai", "Trainer")
    if not Trainer.objects.filter(is_default=True).exists():
        Trainer.objects.get_or_create(
            name="builtin", defaults={"kind": "builtin", "is_default": True}
        )


def backwards(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group = Group.objects.filter(name="trainer").first()
    if group is not None:
        codenames = [f"{a}_{m}" for m, actions in TRAINER_GRANTS for a in actions]
        group.permissions.remove(
            *Permission.objects.filter(content_type__app_label="ai", codename__in=codenames)
        )


class Migration(migrations.Migration):
    dependencies = [
        ("ai", "0015_training"),
        ("accounts", "0004_roles"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
