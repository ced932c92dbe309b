"""The operator console on the stock admin: health and breaker columns, their actions,
recent usage columns, search and filters on every list, the created key shown once."""

import os
import re
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from django.contrib import admin
from django.contrib.messages import get_messages
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from accounts.admin import CREATED_SESSION_KEY
from accounts.models import APIKey, hash_key
from accounts.services import apikey_create
from ai.gateway import router
from ai.models import AIModel, HealthCheck, HealthStatus, ModelLink, Upstream, UsageRollup
from panel import redis as sb_redis
from tests.ai.conftest import (
    make_model,
    session_client,
    wait_for_usage,
    world,  # noqa: F401 (a fixture)
)
from tests.factories import AIModelFactory, ModelLinkFactory, UpstreamFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


def _url(model, view, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def _row(html: str, name: str) -> str:
    """The changelist row that names ``name``."""
    for row in re.findall(r"<tr>.*?</tr>", html, re.S):
        if re.search(rf">{re.escape(name)}\b", row):
            return row
    raise AssertionError(f"no row for {name}")


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


# --- Health on the models and upstreams lists ------------------------------------------


def test_a_model_whose_only_upstream_is_down_shows_unhealthy_not_a_tick(admin_client):
    down = AIModelFactory(name="down-model")
    UpstreamFactory(model=down, health_status=HealthStatus.UNHEALTHY)
    mixed = AIModelFactory(name="mixed-model")
    UpstreamFactory(model=mixed, health_status=HealthStatus.UNHEALTHY)
    UpstreamFactory(model=mixed, health_status=HealthStatus.DEGRADED)
    UpstreamFactory(model=mixed, health_status=HealthStatus.HEALTHY, is_enabled=False)

    html = admin_client.get(_url(AIModel, "changelist")).content.decode()

    row = _row(html, "down-model")
    assert "sb-status--unhealthy" in row and "✗ Unhealthy" in row
    assert "sb-status--healthy" not in row and "✓" not in row
    assert ">0/1<" in row
    # The best enabled upstream counts: the disabled healthy one does not.
    row = _row(html, "mixed-model")
    assert "sb-status--degraded" in row and "! Degraded" in row
    assert ">1/3<" in row
    assert "ai/admin_status.css" in html


def test_the_models_list_stays_at_the_same_number_of_queries_with_more_models(
    admin_client, django_assert_max_num_queries
):
    UpstreamFactory(model=AIModelFactory())
    with django_assert_max_num_queries(100) as one:
        admin_client.get(_url(AIModel, "changelist"))
    for _ in range(6):
        model = AIModelFactory()
        UpstreamFactory(model=model)
        UpstreamFactory(model=model)
    with django_assert_max_num_queries(len(one.captured_queries)):
        admin_client.get(_url(AIModel, "changelist"))


def test_the_upstreams_list_shows_health_last_check_latency_and_a_local_breaker(
    admin_client, settings
):
    settings.REDIS_URL = ""  # breakers per process, as on the embedded default
    upstream = UpstreamFactory(name="probed", health_status=HealthStatus.HEALTHY)
    now = timezone.now()
    HealthCheck.objects.create(
        upstream=upstream, status="unhealthy", is_success=False, checked_at=now - timedelta(1)
    )
    HealthCheck.objects.create(
        upstream=upstream, status="healthy", is_success=True, latency_ms=42, checked_at=now
    )
    Upstream.objects.filter(pk=upstream.pk).update(last_checked_at=now)

    html = admin_client.get(_url(Upstream, "changelist")).content.decode()
    row = _row(html, "probed")

    assert "✓ Healthy" in row and "sb-status--healthy" in row
    assert "42 ms" in row
    assert (
        "field-last_checked_at" in row
        and "-</td>" not in row.split("field-last_checked_at")[1][:40]
    )
    # Without Redis the list shows the breakers of the process serving it, and says so.
    assert "✓ closed" in row and "sb-status--closed" in row
    assert "<strong>this process</strong>" in html


class FakeRedis:
    """The few hash commands the breaker uses, on dicts; ``down`` makes it unreachable."""

    def __init__(self):
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.down = False

    def pipeline(self, transaction=True):
        return FakePipeline(self)

    def hgetall(self, key):
        return dict(self.hashes.get(key, {}))

    def hdel(self, key, *fields):
        bucket = self.hashes.get(key, {})
        return sum(bucket.pop(str(f).encode(), None) is not None for f in fields)

    def hset(self, key, field, value):
        self.hashes.setdefault(key, {})[str(field).encode()] = str(value).encode()


class FakePipeline:
    def __init__(self, redis):
        self.redis, self.calls = redis, []

    def __getattr__(self, name):
        def queue(*args):
            self.calls.append((name, args))
            return self

        return queue

    def execute(self):
        if self.redis.down:
            raise sb_redis.RedisUnavailable("down")
        return [getattr(self.redis, name)(*args) for name, args in self.calls]


@pytest.fixture
def shared_breakers(settings, monkeypatch):
    settings.REDIS_URL = "redis://breakers.invalid:6379/0"
    fake = FakeRedis()
    monkeypatch.setattr(sb_redis, "sync_client", lambda: fake)
    return fake


def test_the_upstreams_list_shows_the_shared_breaker_as_the_gateway_sees_it(
    admin_client, shared_breakers, settings
):
    now = time.time()
    cooldown = settings.GATEWAY_BREAKER_COOLDOWN
    cooling = UpstreamFactory(name="cooling")
    cooled = UpstreamFactory(name="cooled")
    fine = UpstreamFactory(name="fine")
    shared_breakers.hset(router.OPEN_KEY, cooling.pk, now + cooldown / 2)
    shared_breakers.hset(router.FAILS_KEY, cooling.pk, 5)
    shared_breakers.hset(router.OPEN_KEY, cooled.pk, now - 1)
    shared_breakers.hset(router.FAILS_KEY, cooled.pk, 5)
    shared_breakers.hset(router.FAILS_KEY, fine.pk, 1)

    html = admin_client.get(_url(Upstream, "changelist")).content.decode()

    assert "✗ open (5 failures)" in _row(html, "cooling")
    assert "sb-status--open" in _row(html, "cooling")
    assert "! half-open (5 failures)" in _row(html, "cooled")
    assert "✓ closed (1 failure)" in _row(html, "fine")
    assert "<strong>all replicas (Redis)</strong>" in html


def test_a_probe_that_succeeded_since_the_breaker_opened_makes_it_half_open(settings):
    now = time.time()
    until = now + settings.GATEWAY_BREAKER_COOLDOWN / 2
    opened_at = until - settings.GATEWAY_BREAKER_COOLDOWN
    assert router.breaker_state(until, probed_ok_at=opened_at - 1, now=now) == "open"
    assert router.breaker_state(until, probed_ok_at=opened_at + 1, now=now) == "half-open"
    assert router.breaker_state(None, now=now) == "closed"


def test_an_unreachable_redis_shows_an_unknown_breaker(admin_client, shared_breakers):
    UpstreamFactory(name="somewhere")
    shared_breakers.down = True
    row = _row(admin_client.get(_url(Upstream, "changelist")).content.decode(), "somewhere")
    assert "unknown (Redis unreachable)" in row


# --- Actions: close breaker, check now ------------------------------------------------


def _action(admin_client, action, *upstreams):
    return admin_client.post(
        _url(Upstream, "changelist"),
        {"action": action, "_selected_action": [u.pk for u in upstreams]},
        follow=True,
    )


def test_close_breaker_clears_the_shared_state_every_gateway_reads(admin_client, shared_breakers):
    stuck = UpstreamFactory(name="stuck")
    other = UpstreamFactory(name="other")
    for upstream in (stuck, other):
        shared_breakers.hset(router.OPEN_KEY, upstream.pk, time.time() + 60)
        shared_breakers.hset(router.FAILS_KEY, upstream.pk, 9)
    router.breaker.open_until[stuck.pk] = time.time() + 60

    response = _action(admin_client, "close_breaker", stuck)

    assert str(stuck.pk).encode() not in shared_breakers.hashes[router.OPEN_KEY]
    assert str(stuck.pk).encode() not in shared_breakers.hashes[router.FAILS_KEY]
    assert str(other.pk).encode() in shared_breakers.hashes[router.OPEN_KEY]
    assert not router.breaker.is_open(stuck.pk)
    assert any("for every gateway process" in m and "stuck" in m for m in _messages(response))
    assert "✓ closed" in _row(response.content.decode(), "stuck")


def test_close_breaker_without_redis_closes_it_in_this_process_and_says_so(admin_client, settings):
    settings.REDIS_URL = ""
    upstream, other = UpstreamFactory(name="stuck"), UpstreamFactory(name="other")
    for each in (upstream, other):
        router.breaker.open_until[each.pk] = time.time() + 60
        router.breaker.failures[each.pk] = 3
    response = _action(admin_client, "close_breaker", upstream)
    assert not router.breaker.is_open(upstream.pk) and upstream.pk not in router.breaker.failures
    assert router.breaker.is_open(other.pk)
    assert any("stuck" in m and "in this process" in m for m in _messages(response))
    assert "✓ closed" in _row(response.content.decode(), "stuck")
    assert "✗ open (3 failures)" in _row(response.content.decode(), "other")


def test_close_breaker_with_redis_down_says_nothing_was_closed(admin_client, shared_breakers):
    upstream = UpstreamFactory()
    shared_breakers.down = True
    response = _action(admin_client, "close_breaker", upstream)
    assert any("were not closed" in m for m in _messages(response))


def test_check_now_probes_the_selected_upstreams_through_the_health_service(admin_client):
    # Port 9 (discard) refuses connections: the probe fails at once.
    chosen = UpstreamFactory(name="chosen", base_url="http://127.0.0.1:9/v1")
    left = UpstreamFactory(name="left")

    response = _action(admin_client, "check_now", chosen)

    check = HealthCheck.objects.get()
    assert check.upstream == chosen and not check.is_success
    assert not HealthCheck.objects.filter(upstream=left).exists()
    chosen.refresh_from_db()
    assert chosen.health_status == HealthStatus.UNHEALTHY and chosen.last_checked_at
    assert any(m.startswith(f"{chosen}: unhealthy (") for m in _messages(response))


# --- Recent usage and spend per key and per link ---------------------------------------


def _rollup(days_ago: int, requests: int, cost: str, **ids):
    day = (timezone.now() - timedelta(days=days_ago)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    UsageRollup.objects.create(
        period="day", bucket_start=day, requests=requests, cost=Decimal(cost), **ids
    )


def test_keys_show_their_requests_and_spend_of_the_last_30_days(admin_client, alice):
    used, _ = apikey_create(user=alice, name="used-key")
    apikey_create(user=alice, name="idle-key")
    _rollup(0, 3, "0.5", api_key_id=used.pk, model_id=1)
    _rollup(10, 4, "0.25", api_key_id=used.pk, model_id=2)
    _rollup(40, 100, "9", api_key_id=used.pk)  # older than 30 days
    # The hourly rollups of the same usage are not counted twice.
    UsageRollup.objects.create(
        period="hour", bucket_start=timezone.now(), requests=3, cost=1, api_key_id=used.pk
    )

    html = admin_client.get(_url(APIKey, "changelist")).content.decode()

    row = _row(html, "used-key")
    assert '<td class="field-recent_requests">7</td>' in row
    assert '<td class="field-recent_cost">0.75</td>' in row
    row = _row(html, "idle-key")
    assert '<td class="field-recent_requests">0</td>' in row
    assert '<td class="field-recent_cost">0</td>' in row


def test_links_show_their_requests_and_spend_of_the_last_30_days(admin_client, alice):
    link = ModelLinkFactory(model=AIModelFactory(name="linked"), user=alice)
    _rollup(1, 2, "0.125", link_id=link.pk)
    _rollup(2, 5, "1", link_id=link.pk, user_id=alice.pk)

    row = _row(admin_client.get(_url(ModelLink, "changelist")).content.decode(), "Linked")

    assert '<td class="field-recent_requests">7</td>' in row
    assert '<td class="field-recent_cost">1.125</td>' in row


@pytest.mark.parametrize("model", [APIKey, ModelLink], ids=lambda m: m.__name__)
def test_usage_columns_cost_no_query_per_row(
    admin_client, alice, model, django_assert_max_num_queries
):
    def add_row():
        if model is APIKey:
            key, _ = apikey_create(user=alice, name=f"k{APIKey.objects.count()}")
            _rollup(1, 1, "0.1", api_key_id=key.pk)
        else:
            link = ModelLinkFactory(user=alice)
            _rollup(1, 1, "0.1", link_id=link.pk)

    add_row()
    with django_assert_max_num_queries(100) as one_row:
        admin_client.get(_url(model, "changelist"))
    for _ in range(8):
        add_row()
    with django_assert_max_num_queries(len(one_row.captured_queries)):
        response = admin_client.get(_url(model, "changelist"))
    assert response.content.decode().count('<td class="field-recent_requests">1</td>') == 9


# --- Search and filters on every list --------------------------------------------------

# Lists left without search or without filters, and why.
NO_SEARCH = {
    "panel.SiteSettings": "a single row",
}
NO_FILTER = {
    "auth.Group": "a handful of named roles, found by search",
    "sites.Site": "one site (SITE_ID)",
    "panel.SiteSettings": "a single row",
    "panel.Heartbeat": "one row per beat name, found by search",
    "ai.Node": "a handful of nodes, found by search; no field to filter on",
}


def test_every_admin_list_has_search_and_filters_or_a_reason(superuser):
    request = RequestFactory().get("/admin/")
    request.user = superuser
    missing = []
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label
        if not model_admin.get_search_fields(request) and label not in NO_SEARCH:
            missing.append(f"{label}: search")
        if not model_admin.get_list_filter(request) and label not in NO_FILTER:
            missing.append(f"{label}: filter")
    assert not missing
    # Each reason is for a page that is registered and still lacks the thing.
    registered = {m._meta.label: a for m, a in admin.site._registry.items()}
    for label in NO_SEARCH:
        assert not registered[label].get_search_fields(request)
    for label in NO_FILTER:
        assert not registered[label].get_list_filter(request)


def test_the_new_search_and_filters_answer(admin_client, alice, acme):
    from orgs.models import Wallet

    upstream = UpstreamFactory(name="findme")
    HealthCheck.objects.create(
        upstream=upstream, status="healthy", is_success=True, checked_at=timezone.now()
    )
    html = admin_client.get(_url(HealthCheck, "changelist") + "?q=findme").content.decode()
    assert "1 health check" in html
    _rollup(0, 1, "0", api_key_id=4242)
    html = admin_client.get(_url(UsageRollup, "changelist") + "?q=4242").content.decode()
    assert "1 usage rollup" in html
    Wallet.objects.get_or_create(organisation=acme)
    response = admin_client.get(_url(Wallet, "changelist") + "?user__isempty=1")
    assert response.status_code == 200 and "Acme" in response.content.decode()


def test_social_tokens_and_authenticators_are_never_shown(admin_client, alice):
    from allauth.mfa.models import Authenticator
    from allauth.socialaccount.models import SocialAccount, SocialApp, SocialToken

    app = SocialApp.objects.create(provider="openid_connect", provider_id="idp", name="IdP")
    account = SocialAccount.objects.create(user=alice, provider="idp", uid="a")
    token = SocialToken.objects.create(
        app=app, account=account, token="tok-VERY-SECRET", token_secret="ts-SECRET"
    )
    auth = Authenticator.objects.create(
        user=alice, type=Authenticator.Type.TOTP, data={"secret": "TOTP-SECRET"}
    )
    for page in (
        _url(SocialToken, "changelist"),
        _url(SocialToken, "change", token.pk),
        _url(Authenticator, "change", auth.pk),
    ):
        html = admin_client.get(page).content.decode()
        assert "SECRET" not in html, page


# --- The created key: POST-redirect-GET, shown once ------------------------------------


def test_a_new_key_is_shown_once_and_a_reload_creates_nothing(admin_client, alice):
    response = admin_client.post(
        _url(APIKey, "add"),
        {"user": alice.pk, "name": "from-admin", "permissions": ["read", "proxy"]},
    )
    key = APIKey.objects.get(name="from-admin")
    created_url = reverse("admin:accounts_apikey_created", args=[key.pk])
    assert response.status_code == 302 and response["Location"] == created_url

    shown = admin_client.get(created_url)
    assert shown.status_code == 200 and "no-store" in shown["Cache-Control"]
    plain = re.search(r'value="(sb-[A-Za-z0-9_\-]+)"', shown.content.decode()).group(1)
    assert key.key_hash == hash_key(plain)
    assert CREATED_SESSION_KEY not in admin_client.session

    reload = admin_client.get(created_url, follow=True)
    assert plain not in reload.content.decode()
    assert "shown only once" in reload.content.decode()
    assert APIKey.objects.filter(user=alice).count() == 1


def test_the_created_page_shows_no_other_keys_secret(admin_client, alice):
    admin_client.post(
        _url(APIKey, "add"), {"user": alice.pk, "name": "first", "permissions": ["proxy"]}
    )
    first, second = APIKey.objects.get(name="first"), apikey_create(user=alice, name="b")[0]
    response = admin_client.get(reverse("admin:accounts_apikey_created", args=[second.pk]))
    assert response.status_code == 302
    # The entry is gone: the first key's page cannot show it either.
    response = admin_client.get(reverse("admin:accounts_apikey_created", args=[first.pk]))
    assert response.status_code == 302


def test_the_created_page_is_for_staff_only(client, alice):
    key, _ = apikey_create(user=alice, name="k")
    response = client.get(reverse("admin:accounts_apikey_created", args=[key.pk]))
    assert response.status_code == 302 and "/login/" in response["Location"]


# --- Breakers tripped by real gateway requests, seen and closed from the admin ----------


@pytest.fixture(params=["embedded", "redis"])
def topology(request, settings):
    """Without Redis (``make run``: one process serves the gateway and the admin), or with
    the suite's Redis shared by every replica."""
    if request.param == "embedded":
        settings.REDIS_URL = ""
        return router.SCOPE_PROCESS
    if not os.environ.get("REDIS_URL"):
        pytest.skip("issue 18: the shared variant runs when the suite runs with REDIS_URL (CI)")
    settings.REDIS_URL = os.environ["REDIS_URL"]
    router.breaker.reset()  # no breaker state of an earlier test in the shared store
    return router.SCOPE_SHARED


BREAKER_GAUGE = 'switchboard_upstream_breaker_open{upstream="ha-0"}'


def _scrape(gateway) -> str:
    """This process's /metrics (the gauge of the breakers it keeps)."""
    response = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": "Bearer scrape-me"})
    return response.text


def _gateway_chat(gateway, model: str) -> httpx.Response:
    """alice's chat request to the gateway of ``gateway`` (the ``world`` fixture)."""
    return httpx.post(
        f"{gateway.base()}/chat/completions",
        headers={"Authorization": f"Bearer {gateway.alice_key}"},
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=10,
    )


@pytest.mark.django_db(transaction=True)
def test_a_breaker_tripped_by_the_gateway_is_shown_and_closed_from_the_admin(
    world,  # noqa: F811
    topology,
    acme,
    superuser,
    charlie,
    fake_upstream,
    settings,
):
    settings.GATEWAY_BREAKER_THRESHOLD = 2
    settings.GATEWAY_BREAKER_COOLDOWN = 300
    settings.METRICS_TOKEN = "scrape-me"
    make_model(
        "ha", owner=acme, base_urls=[fake_upstream.base_url(status=500), fake_upstream.base_url()]
    )
    primary = Upstream.objects.get(name="ha-0")
    for _ in range(2):  # the primary answers 500 twice: the secondary serves, the breaker opens
        assert _gateway_chat(world, "ha").headers["x-switchboard-upstream"] == "ha-1"
    primary.base_url = fake_upstream.base_url()  # the primary is fine again
    primary.save()
    # The gateway and the admin pages are served by the same server (one process here).
    staff = session_client(superuser, world.url)
    changelist = _url(Upstream, "changelist")

    listed = staff.get(changelist).text
    assert "✗ open (2 failures)" in _row(listed, "ha-0")
    assert f"<strong>{topology}</strong>" in listed
    home = staff.get(reverse("admin:index")).text.split('id="open-breakers"')[1]
    assert f"({topology})" in home
    assert re.search(r">ha / ha-0</a></th><td[^>]*>open<", home.split("</table>")[0])
    assert f"{BREAKER_GAUGE} 1.0" in _scrape(world)
    # While it is open the gateway keeps away from the primary.
    assert _gateway_chat(world, "ha").headers["x-switchboard-upstream"] == "ha-1"

    # charlie is no staff: no list, and his action changes nothing.
    outsider = session_client(charlie, world.url)
    assert "/login/" in outsider.get(changelist).headers["location"]
    close = {"action": "close_breaker", "_selected_action": [primary.pk]}
    assert outsider.post(changelist, data=close).status_code == 302
    assert router.breaker.is_open(primary.pk)

    closed = staff.post(changelist, data=close, follow_redirects=True).text
    assert "Closed the breaker of ha / ha-0" in closed
    assert "✓ closed" in _row(closed, "ha-0")
    assert not router.breaker.is_open(primary.pk)
    assert f"{BREAKER_GAUGE} 0.0" in _scrape(world)

    response = _gateway_chat(world, "ha")
    assert response.status_code == 200 and response.headers["x-switchboard-upstream"] == "ha-0"
    assert wait_for_usage(4)[-1].upstream == primary
