"""The audit log: who created, changed or deleted what, from the admin, the REST API, a
command or a service; secrets never in it; readable by staff only; pruned after retention."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from auditlog.registry import auditlog
from django.apps import apps
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from accounts.models import APIKey, User
from ai.instances.services import instance_create, instance_update
from ai.models import Instance, ModelLink, Node, Trainer, TrainingJob, Upstream
from orgs.models import LedgerEntry, LedgerKind
from orgs.services import wallet_charges_record, wallet_for, wallet_topup
from panel import celery
from panel.audit import MASK
from panel.tasks import audit_prune_task
from tests.api.conftest import as_key
from tests.factories import UserFactory
from tests.panel.test_admin import _upstream_form

pytestmark = pytest.mark.django_db

SECRET = "sk-AUDIT-SECRET-123"


def _entries(model, **filters):
    content_type = ContentType.objects.get_for_model(model)
    return LogEntry.objects.filter(content_type=content_type, **filters).order_by("id")


def _everything_stored() -> str:
    return json.dumps(
        list(
            LogEntry.objects.values(
                "changes", "changes_text", "serialized_data", "additional_data", "object_repr"
            )
        ),
        default=str,
    )


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


def test_it_registers_every_audited_model_of_the_settings():
    for item in settings.AUDITLOG_INCLUDE_TRACKING_MODELS:
        label = item if isinstance(item, str) else item["model"]
        assert auditlog.contains(apps.get_model(label)), label


def test_it_records_an_admin_change_with_actor_address_route_and_diff(
    admin_client, superuser, registry
):
    upstream = registry.upstream
    response = admin_client.post(
        reverse("admin:ai_upstream_change", args=[upstream.pk]),
        _upstream_form(upstream, priority=7, new_api_key=""),
        REMOTE_ADDR="10.1.2.3",
    )
    assert response.status_code == 302
    entry = _entries(Upstream, action=LogEntry.Action.UPDATE).get()
    assert entry.actor == superuser
    assert entry.remote_addr == "10.1.2.3"
    assert entry.changes_dict == {"priority": ["0", "7"]}
    assert entry.additional_data["path"] == f"/admin/ai/upstream/{upstream.pk}/change/"
    assert entry.additional_data["method"] == "POST"
    assert "api_key" not in entry.additional_data


def test_it_records_the_key_that_made_a_rest_change(api, keys, staff, registry):
    response = as_key(api, keys["staff"]).patch(
        f"/api/v1/ai/upstreams/{registry.upstream.pk}", {"weight": 5}, format="json"
    )
    assert response.status_code == 200, response.content
    entry = _entries(Upstream, action=LogEntry.Action.UPDATE).get()
    key = APIKey.objects.get(name="staff-manage")
    assert entry.actor == staff
    assert entry.remote_addr == "127.0.0.1"
    assert entry.additional_data["api_key"] == {
        "id": key.pk,
        "name": "staff-manage",
        "prefix": key.prefix,
    }
    assert entry.additional_data["path"] == f"/api/v1/ai/upstreams/{registry.upstream.pk}"
    assert entry.changes_dict == {"weight": ["1", "5"]}


def test_it_records_a_rest_delete(api, keys, staff, registry):
    link_id = registry.link.pk
    response = as_key(api, keys["staff"]).delete(f"/api/v1/ai/links/{link_id}")
    assert response.status_code == 204
    entry = _entries(ModelLink, action=LogEntry.Action.DELETE).get()
    assert entry.object_pk == str(link_id) and entry.actor == staff
    assert entry.object_repr == str(registry.link)


def test_it_never_stores_or_shows_an_upstream_secret(api, keys, admin_client, registry):
    staff_api = as_key(api, keys["staff"])
    created = staff_api.post(
        "/api/v1/ai/upstreams",
        {"model": registry.model.pk, "name": "audited", "base_url": "https://x.example/v1"}
        | {"api_key": SECRET},
        format="json",
    )
    assert created.status_code == 201, created.content
    upstream_id = created.json()["id"]
    staff_api.patch(
        f"/api/v1/ai/upstreams/{upstream_id}", {"api_key": SECRET + "-2"}, format="json"
    )
    create, update = _entries(Upstream, object_pk=str(upstream_id))
    assert create.changes_dict["api_key"][1] == MASK
    assert update.changes_dict == {"api_key": [MASK, MASK]}
    assert SECRET not in _everything_stored()
    pages = [
        staff_api.get("/api/v1/audit-events").content.decode(),
        admin_client.get(reverse("admin:auditlog_logentry_changelist")).content.decode(),
        admin_client.get(reverse("admin:auditlog_logentry_change", args=[update.pk])).content,
    ]
    assert "sk-AUDIT" not in pages[0] and "sk-AUDIT" not in pages[1]
    assert b"sk-AUDIT" not in pages[2]


def test_it_never_stores_a_key_hash_or_plain_key(api, keys, bob, acme):
    response = as_key(api, keys["staff"]).post(
        "/api/v1/auth/keys", {"name": "audited", "user_id": bob.pk}, format="json"
    )
    assert response.status_code == 201, response.content
    key = APIKey.objects.get(name="audited")
    entry = _entries(APIKey, object_pk=str(key.pk), action=LogEntry.Action.CREATE).get()
    assert entry.changes_dict["name"] == ["None", "audited"]
    stored = _everything_stored()
    assert key.key_hash not in stored and response.json()["key"] not in stored
    # Rotated: the change is recorded, neither hash nor either secret.
    rotated = as_key(api, keys["staff"]).post(
        f"/api/v1/auth/keys/{key.pk}/rotate", {}, format="json"
    )
    assert rotated.status_code == 200, rotated.content
    key.refresh_from_db()
    assert key.previous_hash and key.previous_hash != key.key_hash
    update = _entries(APIKey, object_pk=str(key.pk), action=LogEntry.Action.UPDATE).last()
    assert update is not None and "rotated_at" in update.changes_dict
    stored = _everything_stored()
    for secret in (key.key_hash, key.previous_hash, response.json()["key"], rotated.json()["key"]):
        assert secret not in stored


def test_it_records_a_management_command_without_an_actor(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "pw-of-the-command")
    call_command("createsuperuser", interactive=False, username="ops", email="ops@example.com")
    user = User.objects.get(username="ops")
    entry = _entries(User, object_pk=str(user.pk), action=LogEntry.Action.CREATE).get()
    assert entry.actor is None and entry.remote_addr is None
    assert entry.additional_data is None
    assert entry.changes_dict["password"] == ["None", MASK]
    assert user.password not in _everything_stored()


def test_it_records_top_ups_from_a_service_but_not_usage_charges(acme, alice):
    wallet = wallet_for(organisation=acme)
    entry = wallet_topup(wallet=wallet, amount=Decimal("5"), reason="welcome", by=alice)
    audited = _entries(LedgerEntry, action=LogEntry.Action.CREATE).get()
    assert audited.object_pk == str(entry.pk)
    assert audited.changes_dict["kind"] == ["None", LedgerKind.TOPUP]
    assert audited.changes_dict["amount"] == ["None", "5.000000"]
    wallet_charges_record([(wallet.pk, Decimal("0.5"), "req_1")])
    LedgerEntry.objects.create(wallet=wallet, kind=LedgerKind.USAGE, amount=-1, request_id="r2")
    assert LedgerEntry.objects.count() == 3
    assert _entries(LedgerEntry).count() == 1


def test_it_audits_what_operators_set_on_an_instance_not_what_the_agent_observes():
    instance = instance_create(
        name="local", options={"backend": "command", "command_override": "serve {port}"}
    )
    assert _entries(Instance, action=LogEntry.Action.CREATE).count() == 1
    instance.status, instance.pid, instance.restart_count = "running", 4242, 2
    instance.save(update_fields=["status", "pid", "restart_count"])
    Instance.objects.filter(pk=instance.pk).update(last_request_at=timezone.now())
    assert _entries(Instance, action=LogEntry.Action.UPDATE).count() == 0
    instance_update(instance=instance, options={"environment": {"HF_TOKEN": "hf-secret-token"}})
    update = _entries(Instance, action=LogEntry.Action.UPDATE).get()
    assert update.changes_dict["environment"] == [MASK, MASK]
    assert not set(update.changes_dict) & {*Instance.OBSERVED_FIELDS, "last_request_at"}
    assert "hf-secret-token" not in _everything_stored()


def test_it_lists_audit_events_to_staff_with_filters(api, keys, staff, manager, registry):
    staff_api = as_key(api, keys["staff"])
    upstream_url = f"/api/v1/ai/upstreams/{registry.upstream.pk}"
    staff_api.patch(upstream_url, {"weight": 5}, format="json")
    staff_api.delete(f"/api/v1/ai/links/{registry.link.pk}")
    events = staff_api.get("/api/v1/audit-events").json()
    assert events["count"] == LogEntry.objects.count()
    assert [e["action"] for e in events["results"][:2]] == ["delete", "update"]

    def listed(query):
        response = staff_api.get(f"/api/v1/audit-events?{query}")
        assert response.status_code == 200, response.content
        return [(e["model"], e["action"], e["object_id"]) for e in response.json()["results"]]

    upstream = ("ai.upstream", "update", str(registry.upstream.pk))
    assert listed(f"actor={staff.pk}") == [
        ("ai.modellink", "delete", str(registry.link.pk)),
        upstream,
    ]
    assert listed(f"actor={manager.pk}") == []
    assert listed("model=ai.upstream&action=update") == [upstream]
    assert listed(f"model=ai.upstream&object_id={registry.upstream.pk}&action=delete") == []
    future = (timezone.now() + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert listed(f"since={future}") == []
    assert len(listed(f"until={future}&actor={staff.pk}")) == 2
    event = staff_api.get("/api/v1/audit-events?model=ai.upstream&action=update").json()
    assert event["results"][0]["actor"] == {"id": staff.pk, "username": staff.username}
    assert event["results"][0]["changes"] == {"weight": ["1", "5"]}


@pytest.mark.parametrize(
    ("query", "param"),
    [("model=ai.nothing", "model"), ("since=yesterday", "since"), ("action=read", "action")],
)
def test_it_refuses_bad_filters_with_the_error_envelope(api, keys, query, param):
    response = as_key(api, keys["staff"]).get(f"/api/v1/audit-events?{query}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_it_keeps_the_audit_log_from_everyone_but_staff(api, keys, registry):
    assert api.get("/api/v1/audit-events").status_code == 401
    for persona in ("alice", "bob", "charlie", "manager"):
        response = as_key(api, keys[persona]).get("/api/v1/audit-events")
        assert response.status_code == 403
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert as_key(api, keys["staff"]).get("/api/v1/audit-events").status_code == 200


def test_it_refuses_a_staff_key_without_the_manage_permission(api, staff):
    from accounts.services import apikey_create

    _, plain = apikey_create(user=staff, name="staff-proxy", permissions=["proxy"])
    assert as_key(api, plain).get("/api/v1/audit-events").status_code == 403


def test_it_filters_the_admin_page_by_actor_model_and_action(admin_client, api, keys, staff):
    as_key(api, keys["staff"]).post("/api/v1/auth/keys", {"name": "by-staff"}, format="json")
    url = reverse("admin:auditlog_logentry_changelist")
    page = admin_client.get(f"{url}?actor__id__exact={staff.pk}")
    assert page.status_code == 200
    assert "by-staff" in page.content.decode()
    other = admin_client.get(f"{url}?actor__id__exact={staff.pk}&action__exact=2")
    assert "by-staff" not in other.content.decode()


def test_it_prunes_only_entries_past_retention(settings, acme):
    settings.AUDIT_RETENTION_DAYS = 30
    wallet = wallet_for(organisation=acme)
    old, recent = (wallet_topup(wallet=wallet, amount=Decimal(n), reason="r") for n in (1, 2))
    entries = {e.object_pk: e for e in _entries(LedgerEntry)}
    LogEntry.objects.filter(pk=entries[str(old.pk)].pk).update(
        timestamp=timezone.now() - timedelta(days=31)
    )
    LogEntry.objects.filter(pk=entries[str(recent.pk)].pk).update(
        timestamp=timezone.now() - timedelta(days=29)
    )
    audit_prune_task()
    assert list(_entries(LedgerEntry).values_list("object_pk", flat=True)) == [str(recent.pk)]
    assert celery.app.conf.beat_schedule["audit-prune"]["task"] == audit_prune_task.name


def test_it_masks_a_node_key():
    node = Node.objects.create(name="gpu-1", address="http://10.0.0.9:9201", api_key=SECRET)
    node.api_key = SECRET + "-rotated"
    node.save()
    create, update = _entries(Node, object_pk=str(node.pk))
    assert create.changes_dict["api_key"] == ["None", MASK]
    assert update.changes_dict == {"api_key": [MASK, MASK]}
    assert SECRET not in _everything_stored()


def test_it_lists_audit_events_in_a_fixed_number_of_queries(api, keys, acme, assert_fixed_queries):
    wallet = wallet_for(organisation=acme)

    def add_rows():
        for _ in range(2):
            wallet_topup(wallet=wallet, amount=Decimal("1"), reason="r", by=UserFactory())

    def listed():
        response = as_key(api, keys["staff"]).get("/api/v1/audit-events?page_size=200")
        assert response.status_code == 200
        return len(response.json()["results"])

    # Key lookup and touch, then count and page (actor and content type joined).
    assert_fixed_queries(4, listed, add_rows)


def test_it_masks_a_trainer_environment_and_records_a_job_cancel_request():
    trainer = Trainer.objects.create(name="gpu", environment={"HF_TOKEN": SECRET})
    assert _entries(Trainer).get().changes_dict["environment"] == ["None", MASK]
    assert SECRET not in _everything_stored()
    job = TrainingJob.objects.create(
        base_model_name="base", trainer=trainer, trainer_kind=trainer.kind
    )
    job.status, job.step, job.heartbeat_at = "running", 3, timezone.now()
    job.save(update_fields=["status", "step", "heartbeat_at", "updated_at"])
    assert not _entries(TrainingJob, action=LogEntry.Action.UPDATE).exists()
    job.cancel_requested_at = timezone.now()
    job.save(update_fields=["cancel_requested_at", "updated_at"])
    cancel = _entries(TrainingJob, action=LogEntry.Action.UPDATE).get()
    assert list(cancel.changes_dict) == ["cancel_requested_at"]
