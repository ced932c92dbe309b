"""Rollups, retention, the usage API and the admin's usage and wallet pages."""

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from django.urls import reverse

from accounts.services import apikey_create
from ai.models import RollupPeriod, UsageEvent, UsageRollup
from ai.services import usage_prune, usage_rollup
from orgs.models import LedgerEntry, Wallet
from orgs.services import wallet_for, wallet_topup
from panel.models import Heartbeat
from tests.factories import AIModelFactory, OrganisationFactory, UsageEventFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)


def _event(at, *, prompt=10, completion=5, cost="0.01", **fields):
    """A request at ``at`` whose prompt and completion have cache and reasoning parts
    (stored beside them, summed alike)."""
    return UsageEventFactory(
        created_at=at,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cache_read_tokens=prompt // 2,
        cache_write_tokens=prompt // 5,
        reasoning_tokens=completion // 5,
        cost=Decimal(cost),
        **fields,
    )


@pytest.fixture
def events(alice, bob, charlie, acme):
    chat, embed = AIModelFactory(name="chat"), AIModelFactory(name="embed")
    key, _ = apikey_create(user=alice, name="k")
    made = []
    for hours_ago in (1, 2, 2, 30, 50):
        at = NOW - timedelta(hours=hours_ago)
        made.append(_event(at, user=alice, model=chat, organisation=acme, api_key=key))
        made.append(
            _event(at, user=bob, model=embed, organisation=acme, status="upstream_error", prompt=3)
        )
        made.append(_event(at, user=charlie, model=chat, cost="0.5"))
    return made


def _raw_sums(period):
    sums = defaultdict(lambda: defaultdict(Decimal))
    for e in UsageEvent.objects.all():
        start = e.created_at.replace(minute=0, second=0, microsecond=0)
        if period == RollupPeriod.DAY:
            start = start.replace(hour=0)
        key = (
            start,
            e.model_id,
            e.link_id or 0,
            e.user_id,
            e.organisation_id or 0,
            e.api_key_id or 0,
        )
        for name, value in (
            ("requests", 1),
            ("errors", int(e.status != "ok")),
            ("prompt_tokens", e.prompt_tokens),
            ("completion_tokens", e.completion_tokens),
            ("cache_read_tokens", e.cache_read_tokens),
            ("cache_write_tokens", e.cache_write_tokens),
            ("reasoning_tokens", e.reasoning_tokens),
            ("cost", e.cost),
        ):
            sums[key][name] += value
    return {k: dict(v) for k, v in sums.items()}


def _rollup_sums(period):
    return {
        (r.bucket_start, r.model_id, r.link_id, r.user_id, r.organisation_id, r.api_key_id): {
            "requests": r.requests,
            "errors": r.errors,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "cache_read_tokens": r.cache_read_tokens,
            "cache_write_tokens": r.cache_write_tokens,
            "reasoning_tokens": r.reasoning_tokens,
            "cost": r.cost,
        }
        for r in UsageRollup.objects.filter(period=period)
    }


def test_rollups_equal_the_raw_sums_for_every_key_after_two_runs(events):
    usage_rollup(now=NOW)
    first = list(
        UsageRollup.objects.order_by("id").values_list("period", "bucket_start", "requests", "cost")
    )
    usage_rollup(now=NOW)
    again = list(
        UsageRollup.objects.order_by("id").values_list("period", "bucket_start", "requests", "cost")
    )
    assert sorted(first) == sorted(again)
    for period in (RollupPeriod.HOUR, RollupPeriod.DAY):
        assert _rollup_sums(period) == _raw_sums(period)


def test_a_late_event_is_counted_by_the_next_run(events, alice):
    usage_rollup(now=NOW)
    late = _event(NOW - timedelta(hours=3), user=alice, model=events[0].model, prompt=7, cost="0.2")
    usage_rollup(now=NOW + timedelta(minutes=5))
    assert _rollup_sums(RollupPeriod.HOUR) == _raw_sums(RollupPeriod.HOUR)
    assert _rollup_sums(RollupPeriod.DAY) == _raw_sums(RollupPeriod.DAY)
    assert UsageRollup.objects.filter(user_id=alice.pk, prompt_tokens=7).exists()
    assert late.pk


def test_it_prunes_old_raw_events_in_batches_and_keeps_rollups(events, settings):
    settings.USAGE_RETENTION_DAYS = 2
    usage_rollup(now=NOW)
    later = NOW + timedelta(days=3)
    usage_rollup(now=later)
    rollups_before = _rollup_sums(RollupPeriod.DAY)
    deleted = usage_prune(now=later, batch_size=2)
    assert deleted == 15
    assert not UsageEvent.objects.exists()
    usage_rollup(now=later + timedelta(minutes=5))
    assert _rollup_sums(RollupPeriod.DAY) == rollups_before


def test_it_prunes_nothing_that_no_rollup_has_counted(events, settings):
    settings.USAGE_RETENTION_DAYS = 2
    assert usage_prune(now=NOW + timedelta(days=30)) == 0
    assert UsageEvent.objects.count() == 15


def test_the_beat_task_runs_the_rollup(events):
    from ai.tasks import usage_rollup_task

    usage_rollup_task.apply()
    assert UsageRollup.objects.exists()
    assert Heartbeat.objects.filter(name="usage_rollup").exists()


# --- The usage API ---------------------------------------------------------------


@pytest.fixture
def rolled(events):
    usage_rollup(now=NOW)


def _usage(client, **params):
    query = {"from": "2026-11-18", "to": "2026-11-21", **params}
    return client.get("/api/ai/usage", query)


def _by_name(response):
    return {row["name"]: row for row in response.json()["data"]}


def test_a_user_sees_only_their_own_usage(client, rolled, charlie):
    client.force_login(charlie)
    rows = _by_name(_usage(client, group_by="user"))
    assert set(rows) == {"charlie"}
    assert rows["charlie"]["requests"] == 5 and rows["charlie"]["cost"] == "2.500000"
    # Five events of 10 prompt tokens (5 read from the cache, 2 written), 5 out (1 reasoning).
    tokens = ("prompt_tokens", "cache_read_tokens", "cache_write_tokens", "completion_tokens")
    assert [rows["charlie"][name] for name in tokens] == [50, 25, 10, 25]
    assert rows["charlie"]["reasoning_tokens"] == 5


def test_a_member_sees_their_own_usage_not_their_orgs(client, rolled, bob):
    client.force_login(bob)
    assert set(_by_name(_usage(client, group_by="user"))) == {"bob"}


def test_an_org_admin_sees_the_orgs_usage(client, rolled, alice):
    client.force_login(alice)
    rows = _by_name(_usage(client, group_by="user"))
    assert set(rows) == {"alice", "bob"}
    assert set(_by_name(_usage(client, group_by="org"))) == {"acme"}


def test_staff_see_everything(client, rolled, superuser):
    client.force_login(superuser)
    assert set(_by_name(_usage(client, group_by="user"))) == {"alice", "bob", "charlie"}


def test_it_groups_by_day_and_hour(client, rolled, superuser):
    client.force_login(superuser)
    days = _usage(client, group_by="day").json()["data"]
    assert [d["group"][:10] for d in days] == ["2026-11-18", "2026-11-19", "2026-11-20"]
    assert sum(d["requests"] for d in days) == 15
    hours = _usage(client, group_by="hour").json()["data"]
    assert sum(h["requests"] for h in hours) == 15 and len(hours) == 4


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "planet"}, "group_by"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-11-22"}, "from"),
    ],
)
def test_it_refuses_bad_usage_queries(client, rolled, alice, params, param):
    client.force_login(alice)
    response = _usage(client, **params)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_it_needs_authentication_for_usage(client, rolled):
    assert client.get("/api/ai/usage").status_code == 401


# --- Admin ---------------------------------------------------------------------------


def test_the_dashboard_shows_real_rollups(client, superuser, alice):
    model = AIModelFactory(name="dash-model")
    UsageEventFactory(user=alice, model=model, cost=Decimal("0.25"))
    usage_rollup()
    client.force_login(superuser)
    index = client.get(reverse("admin:index")).content.decode()
    assert reverse("usage-dashboard") in index
    response = client.get(reverse("usage-dashboard"))
    assert response.status_code == 200
    data = response.context["data"]
    assert data["totals"]["requests"] == 1 and data["totals"]["cost"] == 0.25
    assert data["top_users"][0]["name"] == "alice" and data["top_models"][0]["name"] == "dash-model"
    assert "chart-4.6.1.umd.min.js" in response.content.decode()


def test_the_dashboard_is_for_staff_only(client, alice):
    client.force_login(alice)
    assert client.get(reverse("usage-dashboard")).status_code == 302


def test_an_admin_tops_up_wallets_with_a_reason(client, superuser, acme):
    wallet = wallet_for(organisation=acme)
    client.force_login(superuser)
    url = reverse("admin:orgs_wallet_changelist")
    form = client.post(url, {"action": "top_up", "_selected_action": [wallet.pk]})
    assert b"Top up" in form.content
    client.post(
        url,
        {
            "action": "top_up",
            "_selected_action": [wallet.pk],
            "apply": "1",
            "amount": "12.5",
            "reason": "invoice 7",
        },
    )
    wallet.refresh_from_db()
    assert wallet.balance == Decimal("12.5")
    entry = LedgerEntry.objects.get()
    assert (entry.reason, entry.created_by) == ("invoice 7", superuser)
    page = client.get(reverse("admin:orgs_wallet_change", args=[wallet.pk])).content.decode()
    assert "invoice 7" in page


def test_the_balance_always_equals_the_ledger(acme):
    from orgs.services import wallet_adjust, wallet_refund

    wallet = wallet_for(organisation=acme)
    wallet_topup(wallet=wallet, amount=Decimal("10"), reason="a")
    wallet_refund(wallet=wallet, amount=Decimal("0.5"), reason="b")
    wallet_adjust(wallet=wallet, amount=Decimal("-3.25"), reason="c")
    wallet.refresh_from_db()
    assert wallet.balance == Decimal("7.25") == sum(e.amount for e in wallet.entries.all())
    with pytest.raises(ValueError):
        wallet_topup(wallet=wallet, amount=Decimal("-1"), reason="no")
    with pytest.raises(ValueError):
        wallet_adjust(wallet=wallet, amount=Decimal("1"), reason=" ")


def test_a_wallet_has_exactly_one_owner(alice, acme):
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        Wallet.objects.create(user=alice, organisation=acme)
    with pytest.raises(IntegrityError), transaction.atomic():
        Wallet.objects.create()
    assert OrganisationFactory()  # unrelated orgs get no wallet until one is needed
    assert not Wallet.objects.exists()


def test_the_usage_api_works_over_http_with_a_read_key(transactional_db, asgi_server, alice):
    _, key = apikey_create(user=alice, name="reader", permissions=["read"])
    response = httpx.get(
        f"{asgi_server.url}/api/ai/usage", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    assert response.json()["object"] == "list"
