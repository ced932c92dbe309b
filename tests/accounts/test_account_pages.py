"""The end user's account pages through the Django test client: overview, keys (create
once, revoke, rotate), usage, quota and wallet, each showing the signed-in user's own only."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import APIKey
from accounts.selectors import apikey_verify
from accounts.services import apikey_create
from accounts.views import PLAIN_KEY_SESSION_KEY
from ai.models import LimitCounter, RollupPeriod, UsageRollup
from orgs.models import Role, Wallet
from orgs.services import wallet_for, wallet_topup
from panel import redis as sb_redis
from tests.factories import AIModelFactory, MembershipFactory, ModelLinkFactory

pytestmark = pytest.mark.django_db

PAGES = (
    "/accounts/",
    "/accounts/keys/",
    "/accounts/usage/",
    "/accounts/quota/",
    "/accounts/wallet/",
)


@pytest.fixture
def as_alice(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def as_charlie(client, charlie):
    client.force_login(charlie)
    return client


@pytest.fixture
def chat_model(alice):
    """A model linked to alice, with a daily token limit."""
    model = AIModelFactory(name="alice-chat")
    ModelLinkFactory(model=model, user=alice, tokens_per_day=1000, requests_per_minute=10)
    return model


def _rollup(user, model, *, days_ago=0, requests=3, cost="0.75", **extra):
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return UsageRollup.objects.create(
        period=RollupPeriod.DAY,
        bucket_start=day - timedelta(days=days_ago),
        model_id=model.pk,
        user_id=user.pk,
        requests=requests,
        prompt_tokens=10 * requests,
        completion_tokens=5 * requests,
        cost=Decimal(cost),
        **extra,
    )


@pytest.mark.parametrize("path", PAGES)
def test_it_sends_a_visitor_to_the_login_page(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_for_a_new_user_with_nothing(as_charlie, path):
    response = as_charlie.get(path)
    assert response.status_code == 200
    for target in PAGES:
        assert f'href="{target}"'.encode() in response.content


def test_the_chat_page_links_to_the_account(as_alice):
    response = as_alice.get("/chat/")
    assert b'href="/accounts/"' in response.content


def test_the_overview_shows_wallet_orgs_keys_and_this_months_usage(
    as_alice, alice, acme, chat_model
):
    wallet_topup(wallet=wallet_for(user=alice), amount=Decimal("12.5"), reason="gift")
    apikey_create(user=alice, name="live")
    revoked, _ = apikey_create(user=alice, name="gone")
    APIKey.objects.filter(pk=revoked.pk).update(is_revoked=True)
    _rollup(alice, chat_model, requests=4, cost="1.25")
    response = as_alice.get("/accounts/")
    body = response.content.decode()
    assert "12.5" in body
    assert 'href="/accounts/orgs/acme/"' in body and "Owner" in body
    assert response.context["live_keys"] == 1 and response.context["all_keys"] == 2
    month = response.context["month"].totals
    assert (month.requests, month.cost) == (4, Decimal("1.25"))


# --- Keys -----------------------------------------------------------------------------


def test_it_creates_a_key_and_shows_the_plain_key_once(as_alice, alice, chat_model):
    response = as_alice.post(
        "/accounts/keys/",
        {"name": "laptop", "permissions": ["read", "proxy"], "allowed_models": [chat_model.pk]},
    )
    assert response.status_code == 302 and response["Location"] == "/accounts/keys/"
    key = APIKey.objects.get(user=alice, name="laptop")
    assert [m.pk for m in key.allowed_models.all()] == [chat_model.pk]

    shown = as_alice.get("/accounts/keys/")
    plain = shown.context["plain_key"]
    assert apikey_verify(plain=plain) == key
    assert plain in shown.content.decode()
    assert "no-store" in shown["Cache-Control"]

    again = as_alice.get("/accounts/keys/")
    assert again.context["plain_key"] is None
    assert plain not in again.content.decode()
    assert PLAIN_KEY_SESSION_KEY not in as_alice.session
    assert APIKey.objects.filter(user=alice).count() == 1


def test_the_keys_page_names_permissions_by_their_labels(as_alice, alice):
    apikey_create(user=alice, name="laptop", permissions=["read", "proxy"])
    page = as_alice.get("/accounts/keys/").content.decode()
    assert "Proxy (call models), Read (list models, usage)" in page
    assert "read, proxy" not in page


def test_it_creates_a_key_for_an_organisation_of_mine(as_alice, alice, acme):
    as_alice.post(
        "/accounts/keys/", {"name": "team", "permissions": ["proxy"], "organisation": "acme"}
    )
    assert APIKey.objects.get(user=alice, name="team").organisation == acme


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "x" * 101}, "name"),
        ({"name": ""}, "name"),
        ({"name": "old", "expires_at": "2001-01-01T00:00"}, "expires_at"),
        ({"name": "bad", "expires_at": "not a date"}, "expires_at"),
        ({"name": "m", "allowed_models": ["999999"]}, "allowed_models"),
        ({"name": "m", "allowed_models": ["nope"]}, "allowed_models"),
        ({"name": "m", "allowed_models": ["99999999999999999999999"]}, "allowed_models"),
        ({"name": "m", "allowed_models": ["-1"]}, "allowed_models"),
        ({"name": "n\x00ul"}, "name"),
        ({"name": "o", "organisation": "ac\x00me"}, "organisation"),
        ({"name": "far", "expires_at": "99999-01-01T00:00"}, "expires_at"),
        ({"name": "p", "permissions": ["root"]}, "permissions"),
        ({"name": "o", "organisation": "someone-elses"}, "organisation"),
    ],
)
def test_a_bad_key_form_shows_its_errors_inline_and_creates_nothing(as_alice, alice, data, field):
    response = as_alice.post("/accounts/keys/", {"permissions": ["read"], **data})
    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert b'class="error"' in response.content
    assert not APIKey.objects.filter(user=alice).exists()


def test_an_organisation_i_do_not_belong_to_is_refused(as_charlie, charlie, acme):
    response = as_charlie.post(
        "/accounts/keys/", {"name": "o", "permissions": ["read"], "organisation": "acme"}
    )
    assert response.status_code == 400 and "organisation" in response.context["form"].errors
    assert b"Acme" not in response.content
    assert not APIKey.objects.filter(user=charlie).exists()


def test_a_model_i_cannot_use_is_refused(as_alice, alice):
    elsewhere = AIModelFactory(name="not-for-alice")
    response = as_alice.post(
        "/accounts/keys/", {"name": "m", "permissions": ["read"], "allowed_models": [elsewhere.pk]}
    )
    assert response.status_code == 400 and "allowed_models" in response.context["form"].errors


def test_it_revokes_a_key_after_a_confirmation(as_alice, alice):
    key, plain = apikey_create(user=alice, name="old")
    confirm = as_alice.get(f"/accounts/keys/{key.pk}/revoke/")
    assert confirm.status_code == 200 and b"Revoke" in confirm.content
    key.refresh_from_db()
    assert not key.is_revoked
    response = as_alice.post(f"/accounts/keys/{key.pk}/revoke/")
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.is_revoked and apikey_verify(plain=plain) is None
    listed = as_alice.get("/accounts/keys/").content.decode()
    assert "revoked" in listed


def test_it_rotates_a_key_and_shows_the_new_secret_once(as_alice, alice):
    key, old = apikey_create(user=alice, name="ci")
    response = as_alice.post(f"/accounts/keys/{key.pk}/rotate/")
    assert response.status_code == 302
    plain = as_alice.get("/accounts/keys/").context["plain_key"]
    assert plain != old and apikey_verify(plain=plain) == key
    assert as_alice.get("/accounts/keys/").context["plain_key"] is None


def test_rotating_a_revoked_key_says_why(as_alice, alice):
    key, _ = apikey_create(user=alice, name="ci")
    APIKey.objects.filter(pk=key.pk).update(is_revoked=True)
    response = as_alice.post(f"/accounts/keys/{key.pk}/rotate/", follow=True)
    assert b"cannot be rotated" in response.content
    assert response.context["plain_key"] is None


@pytest.mark.parametrize("action", ["revoke", "rotate"])
def test_someone_elses_key_is_not_found(as_charlie, alice, action):
    key, plain = apikey_create(user=alice, name="alice's")
    assert as_charlie.get(f"/accounts/keys/{key.pk}/{action}/").status_code == 404
    assert as_charlie.post(f"/accounts/keys/{key.pk}/{action}/").status_code == 404
    key.refresh_from_db()
    assert not key.is_revoked and apikey_verify(plain=plain) == key


def test_staff_see_and_touch_only_their_own_keys_here(client, superuser, alice):
    key, _ = apikey_create(user=alice, name="alice-only")
    client.force_login(superuser)
    assert b"alice-only" not in client.get("/accounts/keys/").content
    assert client.post(f"/accounts/keys/{key.pk}/revoke/").status_code == 404


def test_a_key_id_past_the_integer_range_is_not_found(as_alice):
    assert as_alice.post("/accounts/keys/99999999999999999999999/revoke/").status_code == 404


def test_charlie_sees_none_of_alices_keys(as_charlie, alice):
    apikey_create(user=alice, name="secret-name")
    response = as_charlie.get("/accounts/keys/")
    assert b"secret-name" not in response.content
    assert list(response.context["keys"]) == []


def test_the_key_list_costs_the_same_queries_however_many_keys(
    as_alice, alice, chat_model, acme, assert_fixed_queries
):
    def add_rows():
        key, _ = apikey_create(user=alice, name="k", organisation=acme)
        key.allowed_models.set([chat_model])

    def listed():
        response = as_alice.get("/accounts/keys/")
        assert response.status_code == 200
        return len(response.context["keys"])

    assert_fixed_queries(7, listed, add_rows)


def test_the_key_list_stays_under_a_bound(
    as_alice, alice, chat_model, django_assert_max_num_queries
):
    for i in range(20):
        apikey_create(user=alice, name=f"k{i}", allowed_models=[chat_model])
    with django_assert_max_num_queries(12):
        as_alice.get("/accounts/keys/")


# --- Usage ----------------------------------------------------------------------------


def test_usage_shows_my_rollups_by_model_and_day(as_alice, alice, chat_model):
    _rollup(alice, chat_model, days_ago=0, requests=3, cost="0.75")
    _rollup(alice, chat_model, days_ago=2, requests=2, cost="0.5")
    _rollup(alice, chat_model, days_ago=20, requests=7, cost="9")
    response = as_alice.get("/accounts/usage/?days=7")
    data = response.context["data"]
    assert (data.totals.requests, data.totals.cost) == (5, Decimal("1.25"))
    assert len(data.days) == 7 and len(data.rows) == 2
    assert data.by_model["alice-chat"].requests == 5
    chart = response.context["chart"]
    assert chart["requests"][-1] == 3 and chart["requests"][-3] == 2 and sum(chart["requests"]) == 5
    assert b"chart-4.6.1.umd.min.js" in response.content
    wider = as_alice.get("/accounts/usage/?days=30").context["data"]
    assert wider.totals.requests == 12 and len(wider.days) == 30


def test_an_unknown_period_falls_back_to_thirty_days(as_alice):
    assert as_alice.get("/accounts/usage/?days=100000").context["days"] == 30


def test_usage_is_my_own_only_not_my_orgs_nor_others(as_alice, alice, bob, acme, chat_model):
    # Alice owns acme: the REST usage route would show her bob's usage too; this page does not.
    _rollup(bob, chat_model, requests=50, organisation_id=acme.pk)
    _rollup(alice, chat_model, requests=1)
    assert as_alice.get("/accounts/usage/").context["data"].totals.requests == 1


def test_charlie_sees_none_of_alices_usage(as_charlie, alice, chat_model):
    _rollup(alice, chat_model, requests=9)
    response = as_charlie.get("/accounts/usage/")
    assert response.context["data"].totals.requests == 0
    assert b"alice-chat" not in response.content


def test_the_usage_page_costs_the_same_queries_however_many_rows(
    as_alice, alice, django_assert_max_num_queries
):
    for i in range(30):
        _rollup(alice, AIModelFactory(), days_ago=i % 7)
    with django_assert_max_num_queries(6):
        response = as_alice.get("/accounts/usage/?days=7")
    assert response.context["data"].totals.requests == 90


# --- Quota ----------------------------------------------------------------------------


@pytest.fixture
def counter():
    """Set a running counter where the gateway keeps them: Redis when configured (removed
    after the test), else the database."""
    written = []

    def write(key: str, value: int) -> None:
        if sb_redis.is_configured():
            sb_redis.sync_client().set(key, value, ex=3600)
            written.append(key)
        else:
            LimitCounter.objects.create(
                key=key, value=value, expires_at=timezone.now() + timedelta(days=1)
            )

    yield write
    if written:
        sb_redis.sync_client().delete(*written)


def test_quota_page_says_so_when_the_counters_store_is_unreachable(
    as_alice, alice, chat_model, settings
):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = as_alice.get("/accounts/quota/")
    assert response.status_code == 503
    assert b"cannot be read right now" in response.content


def test_quota_shows_what_is_left_in_the_gateways_counters(as_alice, alice, chat_model, counter):
    link = chat_model.links.get()
    today = datetime.now(UTC).strftime("%Y%m%d")
    counter(f"sb:lim:link:{link.pk}:tokens_per_day:{today}", 250)
    response = as_alice.get("/accounts/quota/")
    [quota] = response.context["quotas"]
    limits = {limit.name: limit for limit in quota.limits}
    assert (limits["tokens_per_day"].used, limits["tokens_per_day"].remaining) == (250, 750)
    assert limits["requests_per_minute"].remaining == 10
    assert not quota.is_wallet_billed and quota.owner == "you"
    assert b"tokens per day" in response.content


def test_quota_names_wallet_billed_links_and_org_links(as_alice, alice, acme):
    model = AIModelFactory(name="org-model")
    ModelLinkFactory(
        model=model, organisation=acme, is_wallet_billed=True, cost_per_month=Decimal("10")
    )
    response = as_alice.get("/accounts/quota/")
    [quota] = response.context["quotas"]
    assert quota.is_wallet_billed and quota.owner == "Acme"
    assert quota.limits[0].remaining == Decimal("10")
    assert b'<td class="remaining">10</td>' in response.content
    assert b"wallet-billed" in response.content


def test_quota_shows_what_is_left_of_my_keys_own_limits(as_alice, alice, charlie, counter):
    key, _ = apikey_create(user=alice, name="capped")
    APIKey.objects.filter(pk=key.pk).update(cost_per_month=Decimal("2.5"))
    apikey_create(user=alice, name="uncapped")
    month = datetime.now(UTC).strftime("%Y%m")
    counter(f"sb:lim:key:{key.pk}:cost_per_month:{month}", 1_000_000)  # one credit spent
    others, _ = apikey_create(user=charlie, name="charlies-capped")
    APIKey.objects.filter(pk=others.pk).update(requests_per_minute=3)
    response = as_alice.get("/accounts/quota/")
    [capped] = response.context["key_quotas"]
    assert capped.name == "capped"
    [limit] = capped.limits
    assert (limit.used, limit.remaining, limit.limit) == (1, Decimal("1.5"), Decimal("2.5"))
    assert b"charlies-capped" not in response.content


def test_the_quota_page_costs_bounded_queries(as_alice, alice, acme, django_assert_max_num_queries):
    for _ in range(8):
        ModelLinkFactory(user=alice, tokens_per_day=100, requests_per_day=5)
        ModelLinkFactory(organisation=acme, cost_per_month=Decimal(1), is_wallet_billed=True)
    with django_assert_max_num_queries(12):
        response = as_alice.get("/accounts/quota/")
    assert len(response.context["quotas"]) == 16


def test_the_overview_costs_bounded_queries(
    as_alice, alice, acme, chat_model, django_assert_max_num_queries
):
    for i in range(10):
        apikey_create(user=alice, name=f"k{i}", allowed_models=[chat_model])
        _rollup(alice, AIModelFactory())
    with django_assert_max_num_queries(8):
        response = as_alice.get("/accounts/")
    assert response.context["all_keys"] == 10 and response.context["month"].totals.requests == 30


def test_charlie_sees_none_of_alices_links(as_charlie, alice, chat_model):
    response = as_charlie.get("/accounts/quota/")
    assert response.context["quotas"] == [] and b"alice-chat" not in response.content


# --- Wallet ---------------------------------------------------------------------------


def test_the_wallet_shows_my_balance_and_a_paginated_ledger(as_alice, alice):
    wallet = wallet_for(user=alice)
    for i in range(30):
        wallet_topup(wallet=wallet, amount=Decimal(1), reason=f"topup-{i}")
    first = as_alice.get("/accounts/wallet/")
    assert "30" in first.content.decode()
    assert len(first.context["page"].object_list) == 25
    assert b"topup-29" in first.content and b"topup-0<" not in first.content
    second = as_alice.get("/accounts/wallet/?page=2")
    assert len(second.context["page"].object_list) == 5 and b"topup-0<" in second.content
    assert as_alice.get("/accounts/wallet/?page=junk").status_code == 200


def test_the_wallet_links_the_org_wallets_i_administer_only(as_alice, client, alice, bob, acme):
    other = MembershipFactory(user=alice, role=Role.MEMBER).organisation
    wallet_topup(wallet=wallet_for(organisation=acme), amount=Decimal(7), reason="org")
    body = as_alice.get("/accounts/wallet/").content.decode()
    assert 'href="/accounts/orgs/acme/"' in body
    assert f'href="/accounts/orgs/{other.slug}/"' not in body
    client.force_login(bob)
    assert b"/accounts/orgs/acme/" not in client.get("/accounts/wallet/").content


def test_looking_at_the_pages_creates_no_wallet(as_charlie, charlie):
    as_charlie.get("/accounts/")
    body = as_charlie.get("/accounts/wallet/").content.decode()
    assert not Wallet.objects.filter(user=charlie).exists()
    assert "No entries yet." in body


def test_charlie_sees_none_of_alices_ledger(as_charlie, alice):
    wallet_topup(wallet=wallet_for(user=alice), amount=Decimal(3), reason="alice-gift")
    response = as_charlie.get("/accounts/wallet/")
    assert b"alice-gift" not in response.content
    assert response.context["page"].paginator.count == 0


def test_the_ledger_costs_bounded_queries(as_alice, alice, django_assert_max_num_queries):
    wallet = wallet_for(user=alice)
    for i in range(40):
        wallet_topup(wallet=wallet, amount=Decimal(1), reason=f"t{i}")
    with django_assert_max_num_queries(8):
        as_alice.get("/accounts/wallet/")
