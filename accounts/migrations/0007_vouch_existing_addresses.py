"""Every account made before django-allauth came was made by an operator: record its
address as verified and primary, so that it keeps signing in at /accounts/login/ under
mandatory e-mail verification (accounts.stages) and resets its password by e-mail.

An address another account already holds verified is left alone (ACCOUNT_UNIQUE_EMAIL);
so is the second of two accounts sharing one, which signs in by username.
"""

from django.db import migrations


def vouch_existing_addresses(apps, schema_editor):
    User = apps.get_model("accounts", "User")
    EmailAddress = apps.get_model("account", "EmailAddress")
    taken = {
        e.lower()
        for e in EmailAddress.objects.filter(verified=True).values_list("email", flat=True)
    }
    for user in User.objects.exclude(email="").order_by("pk").iterator():
        email = user.email.strip().lower()
        if not email or email in taken:
            continue
        if EmailAddress.objects.filter(user=user, verified=True).exists():
            continue
        EmailAddress.objects.filter(user=user, primary=True).update(primary=False)
        EmailAddress.objects.update_or_create(
            user=user, email=email, defaults={"verified": True, "primary": True}
        )
        taken.add(email)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_key_rotation"),
        ("account", "0009_emailaddress_unique_primary_email"),
    ]

    operations = [migrations.RunPython(vouch_existing_addresses, migrations.RunPython.noop)]
