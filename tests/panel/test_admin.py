import re
from decimal import Decimal

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.socialaccount.models import SocialAccount, SocialApp, SocialToken
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from accounts.models import APIKey, hash_key
from accounts.services import apikey_create
from ai.instances.services import instance_create
from ai.models import Dataset, HealthCheck, TrainerKind, TrainingJob, Upstream, UsageEvent
from ai.services import usage_rollup
from orgs.services import invitation_create, wallet_for, wallet_topup
from panel.models import Heartbeat, SiteSettings
from tests.factories import AIModelFactory, ModelLinkFactory, UpstreamFactory

pytestmark = pytest.mark.django_db

UPSTREAM_SECRET = "sk-upstream-very-secret-value"
MODELS = sorted(filter(admin.site.is_registered, apps.get_models()), key=lambda m: m._meta.label)


@pytest.fixture
def populated(alice, acme):
    model = AIModelFactory(name="acme-chat")
    upstream = UpstreamFactory(model=model, api_key=UPSTREAM_SECRET)
    HealthCheck.objects.create(
        upstream=upstream,
        status="healthy",
        is_success=True,
        latency_ms=12,
        checked_at=timezone.now(),
    )
    ModelLinkFactory(model=model, organisation=acme, is_default=True)
    apikey_create(user=alice, name="existing")
    SiteSettings.load()
    Heartbeat.objects.create(name="beat", beat_at=timezone.now())
    Group.objects.get_or_create(name="model_manager")
    dataset = Dataset.objects.create(
        organisation=acme, created_by=alice, name="train.jsonl", content=b"{}"
    )
    TrainingJob.objects.create(
        organisation=acme,
        created_by=alice,
        base_model=model,
        base_model_name=model.name,
        dataset=dataset,
        trainer_kind=TrainerKind.BUILTIN,
    )
    wallet = wallet_for(organisation=acme)
    wallet_topup(wallet=wallet, amount=Decimal("5"), reason="welcome", by=alice)
    invitation_create(
        organisation=acme, email="dave@example.com", role="member", by=alice, absolute_uri=str
    )
    UsageEvent.objects.create(
        created_at=timezone.now(),
        request_id="req_1",
        user=alice,
        model=model,
        route="chat.completions",
        status="ok",
        prompt_tokens=3,
        completion_tokens=5,
        cost=Decimal("0.000010"),
    )
    usage_rollup()
    instance_create(
        name="local",
        options={"backend": "command", "command_override": "serve {port}"},
        start=False,
    )
    # django-allauth's rows: an address, an SSO provider and account, an MFA authenticator.
    EmailAddress.objects.create(user=alice, email="alice@example.com", verified=True, primary=True)
    app = SocialApp.objects.create(
        provider="openid_connect", provider_id="idp", name="IdP", client_id="c", secret="s"
    )
    social = SocialAccount.objects.create(user=alice, provider="idp", uid="alice-at-idp")
    SocialToken.objects.create(app=app, account=social, token="t")
    Authenticator.objects.create(user=alice, type=Authenticator.Type.RECOVERY_CODES, data={})


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


def _url(model, view, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m._meta.label)
def test_it_renders_every_changelist_for_a_superuser(admin_client, populated, model):
    response = admin_client.get(_url(model, "changelist"))
    assert response.status_code == 200


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m._meta.label)
def test_it_renders_every_add_page_a_superuser_may_use(
    admin_client, populated, model, rf, superuser
):
    model_admin = admin.site.get_model_admin(model)
    request = rf.get("/")
    request.user = superuser
    response = admin_client.get(_url(model, "add"))
    expected = 200 if model_admin.has_add_permission(request) else 403
    assert response.status_code == expected


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m._meta.label)
def test_it_renders_every_change_page_for_a_superuser(admin_client, populated, model):
    obj = model._default_manager.first()
    assert obj is not None, f"the populated fixture lacks a {model._meta.label}"
    response = admin_client.get(_url(model, "change", obj.pk))
    assert response.status_code == 200


@pytest.mark.parametrize(
    "page",
    [
        lambda: _url(Upstream, "changelist"),
        lambda: _url(Upstream, "change", Upstream.objects.get().pk),
        lambda: _url(Upstream.model.field.related_model, "change", Upstream.objects.get().model_id),
    ],
    ids=["upstream-list", "upstream-change", "model-change-with-inline"],
)
def test_it_never_shows_the_upstream_key(admin_client, populated, page):
    html = admin_client.get(page()).content.decode()
    assert UPSTREAM_SECRET not in html
    assert Upstream.objects.values_list("api_key", flat=True).first() != ""


def test_it_keeps_the_upstream_key_when_the_field_is_left_blank(admin_client, populated):
    upstream = Upstream.objects.get()
    data = _upstream_form(upstream, new_api_key="")
    response = admin_client.post(_url(Upstream, "change", upstream.pk), data)
    assert response.status_code == 302
    upstream.refresh_from_db()
    assert upstream.api_key == UPSTREAM_SECRET


def test_it_replaces_the_upstream_key_when_a_new_one_is_given(admin_client, populated):
    upstream = Upstream.objects.get()
    response = admin_client.post(
        _url(Upstream, "change", upstream.pk), _upstream_form(upstream, new_api_key="sk-new")
    )
    assert response.status_code == 302
    upstream.refresh_from_db()
    assert upstream.api_key == "sk-new"


def test_it_clears_the_upstream_key_on_request(admin_client, populated):
    upstream = Upstream.objects.get()
    data = _upstream_form(upstream, new_api_key="", clear_api_key="on")
    admin_client.post(_url(Upstream, "change", upstream.pk), data)
    upstream.refresh_from_db()
    assert upstream.api_key == ""


def test_it_refuses_an_upstream_name_with_a_control_character(admin_client, populated):
    upstream = Upstream.objects.get()
    data = _upstream_form(upstream, name="bad\x01name", new_api_key="")
    response = admin_client.post(_url(Upstream, "change", upstream.pk), data)
    assert response.status_code == 200
    assert "name" in response.context["adminform"].form.errors
    assert Upstream.objects.get().name == upstream.name


def _upstream_form(upstream, **extra):
    return {
        "model": upstream.model_id,
        "name": upstream.name,
        "base_url": upstream.base_url,
        "provider_model_id": upstream.provider_model_id,
        "is_enabled": "on",
        "priority": upstream.priority,
        "weight": upstream.weight,
        "connect_timeout": upstream.connect_timeout,
        "first_byte_timeout": upstream.first_byte_timeout,
        "idle_timeout": upstream.idle_timeout,
        "total_timeout": upstream.total_timeout,
        "api_style": upstream.api_style,
        "probe": upstream.probe,
        "health_checks-TOTAL_FORMS": "0",
        "health_checks-INITIAL_FORMS": "0",
        **extra,
    }


def test_it_shows_a_new_api_key_once_and_stores_only_its_hash(admin_client, populated, alice):
    response = admin_client.post(
        _url(APIKey, "add"),
        {"user": alice.pk, "name": "from-admin", "permissions": ["read", "proxy"]},
        follow=True,
    )
    assert response.status_code == 200
    html = response.content.decode()
    plain = re.search(r'value="(sb-[A-Za-z0-9_\-]+)"', html).group(1)
    key = APIKey.objects.get(name="from-admin")
    assert key.key_hash == hash_key(plain)
    assert key.permissions == ["proxy", "read"]
    assert "no-store" in response["Cache-Control"]
    for page in (_url(APIKey, "changelist"), _url(APIKey, "change", key.pk)):
        assert plain not in admin_client.get(page).content.decode()


def test_it_refuses_an_api_key_for_an_organisation_its_owner_is_not_in(
    admin_client, populated, charlie, acme
):
    response = admin_client.post(
        _url(APIKey, "add"),
        {"user": charlie.pk, "organisation": acme.pk, "name": "sneaky", "permissions": ["proxy"]},
    )
    assert response.status_code == 200
    assert not APIKey.objects.filter(name="sneaky").exists()
    assert "not a member" in response.content.decode()


def test_it_revokes_keys_with_the_admin_action(admin_client, populated):
    key = APIKey.objects.get(name="existing")
    admin_client.post(
        _url(APIKey, "changelist"), {"action": "revoke_keys", "_selected_action": [key.pk]}
    )
    key.refresh_from_db()
    assert key.is_revoked


def test_it_keeps_the_site_settings_a_singleton(admin_client, populated):
    assert admin_client.get(_url(SiteSettings, "add")).status_code == 403
    assert SiteSettings.objects.count() == 1


def test_it_refuses_the_admin_to_anonymous_visitors(client, populated):
    response = client.get(_url(Upstream, "changelist"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
