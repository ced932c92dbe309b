from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction

from ai.models import AIModel, ModelLink, Upstream
from tests.factories import AIModelFactory, ModelLinkFactory, OrganisationFactory, UpstreamFactory

pytestmark = pytest.mark.django_db


def test_it_rejects_a_link_with_both_a_user_and_an_organisation(alice, acme):
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelLinkFactory(user=alice, organisation=acme)


def test_it_rejects_a_link_with_no_owner():
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelLinkFactory(user=None, organisation=None)


def test_it_reports_the_owner_rule_in_plain_words_on_validation(alice, acme):
    link = ModelLink(model=AIModelFactory(), user=alice, organisation=acme)
    with pytest.raises(ValidationError, match="exactly one user or one organisation"):
        link.full_clean()


def test_it_accepts_a_link_owned_by_a_user_or_by_an_organisation(alice, acme):
    model = AIModelFactory()
    assert ModelLinkFactory(model=model, user=alice).owner == alice
    assert ModelLinkFactory(model=model, organisation=acme).owner == acme


def test_it_rejects_linking_the_same_user_to_a_model_twice(alice):
    model = AIModelFactory()
    ModelLinkFactory(model=model, user=alice)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelLinkFactory(model=model, user=alice)


def test_it_rejects_linking_the_same_organisation_to_a_model_twice(acme):
    model = AIModelFactory()
    ModelLinkFactory(model=model, organisation=acme)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelLinkFactory(model=model, organisation=acme)


def test_it_allows_one_default_model_per_user(alice):
    ModelLinkFactory(user=alice, is_default=True)
    ModelLinkFactory(user=alice, is_default=False)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelLinkFactory(user=alice, is_default=True)


def test_it_allows_one_default_model_per_organisation():
    org = OrganisationFactory()
    ModelLinkFactory(organisation=org, is_default=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelLinkFactory(organisation=org, is_default=True)


def test_it_treats_empty_limits_as_unlimited(alice):
    link = ModelLinkFactory(user=alice, requests_per_minute=10, cost_per_month=Decimal("5"))
    assert link.limits == {
        "requests_per_minute": 10,
        "tokens_per_minute": None,
        "requests_per_day": None,
        "tokens_per_day": None,
        "tokens_per_month": None,
        "cost_per_month": Decimal("5"),
    }


def test_it_rejects_duplicate_model_names():
    AIModelFactory(name="gpt-local")
    with pytest.raises(IntegrityError), transaction.atomic():
        AIModelFactory(name="gpt-local")


@pytest.mark.parametrize(
    "config",
    [
        {"context_window": -1},
        {"max_output_tokens": "many"},
        {"default_temperature": 3},
        {"default_temperature": True},
        [],
    ],
)
def test_it_rejects_an_invalid_model_config(config):
    model = AIModel(name="m", config=config)
    with pytest.raises(ValidationError):
        model.full_clean()


def test_it_rejects_tags_that_are_not_a_list_of_strings():
    with pytest.raises(ValidationError):
        AIModel(name="m", tags="chat").full_clean()


def test_it_accepts_a_complete_model_config():
    model = AIModel(
        name="m",
        tags=["fast"],
        config={"context_window": 8192, "max_output_tokens": 512, "default_temperature": 0.7},
    )
    model.full_clean()
    assert model.max_output_tokens == 512


def test_it_rejects_an_upstream_weight_below_one():
    with pytest.raises(IntegrityError), transaction.atomic():
        UpstreamFactory(weight=0)


def test_it_rejects_two_upstreams_with_one_name_on_a_model():
    upstream = UpstreamFactory(name="primary")
    with pytest.raises(IntegrityError), transaction.atomic():
        UpstreamFactory(model=upstream.model, name="primary")


def test_it_sends_the_public_name_upstream_when_no_provider_id_is_set():
    upstream = UpstreamFactory(provider_model_id="", model=AIModelFactory(name="public"))
    assert upstream.upstream_model_id == "public"


def test_it_stores_the_upstream_key_encrypted_and_reads_it_back_plain():
    upstream = UpstreamFactory(api_key="sk-upstream-secret-123")
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM ai_upstream WHERE id = %s", [upstream.pk])
        (raw,) = cursor.fetchone()
    assert raw != "sk-upstream-secret-123"
    assert "sk-upstream-secret" not in raw
    assert raw.startswith("fernet:")
    assert Upstream.objects.get(pk=upstream.pk).api_key == "sk-upstream-secret-123"


def test_it_encrypts_the_same_key_differently_each_time():
    first = UpstreamFactory(api_key="same")
    second = UpstreamFactory(api_key="same")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT api_key FROM ai_upstream WHERE id IN (%s, %s)", [first.pk, second.pk]
        )
        raws = {row[0] for row in cursor.fetchall()}
    assert len(raws) == 2


def test_it_reads_values_written_with_an_older_key_after_rotation(settings):
    from cryptography.fernet import Fernet

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [old]
    upstream = UpstreamFactory(api_key="rotate-me")
    settings.FIELD_ENCRYPTION_KEYS = [new, old]
    assert Upstream.objects.get(pk=upstream.pk).api_key == "rotate-me"


@pytest.mark.parametrize(
    "name", ["bad\x01name", "line\nbreak", "tab\tbed", "del\x7f", "c1\x9b", " padded", "padded "]
)
def test_it_rejects_an_upstream_name_that_cannot_be_a_header_value(name):
    # The name is sent in the x-switchboard-upstream header of every response.
    upstream = Upstream(model=AIModelFactory(), name=name, base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValidationError) as error:
        upstream.full_clean()
    assert set(error.value.message_dict) == {"name"}


def test_it_accepts_an_upstream_name_in_any_script():
    Upstream(
        model=AIModelFactory(), name="Zürich – 東京 #2", base_url="http://127.0.0.1:9/v1"
    ).full_clean()


def test_the_admin_edits_an_upstreams_protocols(client, superuser):
    from django.urls import reverse

    upstream = UpstreamFactory()
    client.force_login(superuser)
    url = reverse("admin:ai_upstream_change", args=[upstream.pk])
    form = client.get(url).content.decode()
    assert 'name="api_style"' in form and 'name="speaks_responses"' in form
    assert '<option value="anthropic">' in form
