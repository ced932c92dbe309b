"""factory_boy factories for every model the suites create."""

from datetime import timedelta
from decimal import Decimal

import factory
from django.utils import timezone
from factory.django import DjangoModelFactory

from accounts.models import User
from ai.models import AIModel, ModelLink, Upstream, UsageEvent
from orgs.models import Membership, Organisation, Role


class UserFactory(DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ["username"]
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("pw-for-tests")


class OrganisationFactory(DjangoModelFactory):
    class Meta:
        model = Organisation

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")


class MembershipFactory(DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    organisation = factory.SubFactory(OrganisationFactory)
    role = Role.MEMBER


class AIModelFactory(DjangoModelFactory):
    class Meta:
        model = AIModel

    name = factory.Sequence(lambda n: f"model-{n}")
    display_name = factory.LazyAttribute(lambda m: m.name.title())
    config = factory.LazyFunction(lambda: {"context_window": 4096, "max_output_tokens": 256})


class UpstreamFactory(DjangoModelFactory):
    class Meta:
        model = Upstream

    model = factory.SubFactory(AIModelFactory)
    name = factory.Sequence(lambda n: f"upstream-{n}")
    base_url = "http://127.0.0.1:9/v1"
    provider_model_id = "fake-chat"


class ModelLinkFactory(DjangoModelFactory):
    class Meta:
        model = ModelLink

    model = factory.SubFactory(AIModelFactory)


class UsageEventFactory(DjangoModelFactory):
    """A chat request of five minutes ago that ended well: 10 prompt and 5 completion tokens."""

    class Meta:
        model = UsageEvent

    created_at = factory.LazyFunction(lambda: timezone.now() - timedelta(minutes=5))
    request_id = factory.Sequence(lambda n: f"req_factory_{n}")
    user = factory.SubFactory(UserFactory)
    model = factory.SubFactory(AIModelFactory)
    route = "chat.completions"
    status = "ok"
    prompt_tokens = 10
    completion_tokens = 5
    cost = Decimal("0.10")
