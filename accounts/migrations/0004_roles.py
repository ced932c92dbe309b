"""The model_manager and trainer groups (seed 004's roles) with their model permissions."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLES = {
    # Manages the model registry: models, their upstreams, and who may use them.
    "model_manager": [
        ("ai", "aimodel", ("view", "add", "change", "delete")),
        ("ai", "upstream", ("view", "add", "change", "delete")),
        ("ai", "modellink", ("view", "add", "change", "delete")),
        ("ai", "healthcheck", ("view",)),
        ("ai", "usageevent", ("view",)),
        ("orgs", "organisation", ("view",)),
    ],
    # Training jobs come with a later issue; until then a trainer may see the models.
    "trainer": [
        ("ai", "aimodel", ("view",)),
        ("ai", "upstream", ("view",)),
    ],
}


def create_roles(apps, schema_editor):
    # Permissions are normally created after migrate; make sure they exist now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, grants in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        codenames = [
            (app, f"{action}_{model}") for app, model, actions in grants for action in actions
        ]
        for app, codename in codenames:
            group.permissions.add(
                Permission.objects.get(content_type__app_label=app, codename=codename)
            )


def delete_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=list(ROLES)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_apikey_cost_per_month_apikey_requests_per_minute"),
        ("ai", "0004_upstream_health_check_interval_upstream_probe_and_more"),
        ("orgs", "0002_wallet_ledgerentry_wallet_wallet_exactly_one_owner"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_roles, delete_roles)]
