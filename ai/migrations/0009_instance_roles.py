"""The model_manager group (accounts 0004) manages local model instances too."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "model_manager"
CODENAMES = ["view_instance", "add_instance", "change_instance", "delete_instance"]


def grant(apps, schema_editor):
    # Permissions are normally created after migrate; make sure the instance ones exist now.
    app_config = apps.get_app_config("ai")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(
        *Permission.objects.filter(content_type__app_label="ai", codename__in=CODENAMES)
    )


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group = Group.objects.filter(name=GROUP).first()
    if group is not None:
        group.permissions.remove(
            *Permission.objects.filter(content_type__app_label="ai", codename__in=CODENAMES)
        )


class Migration(migrations.Migration):
    dependencies = [
        ("ai", "0008_instances"),
        ("accounts", "0004_roles"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
