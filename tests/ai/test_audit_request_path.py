"""Over the real ASGI server: the request path writes no audit entry (usage and wallet
charges are not admin actions), and a management change records its actor and key."""

from decimal import Decimal

import httpx
import pytest
from auditlog.models import LogEntry

from accounts.services import apikey_create
from ai.models import ModelLink
from orgs.models import LedgerEntry, LedgerKind
from orgs.services import wallet_for, wallet_topup
from tests.ai.conftest import wait_for_usage
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

HI = [{"role": "user", "content": "Hi"}]


def test_it_audits_no_chat_completion_or_its_wallet_charge(world, acme):
    ModelLink.objects.filter(model=world.chat).update(is_wallet_billed=True)
    wallet_topup(wallet=wallet_for(organisation=acme), amount=Decimal("10"), reason="credit")
    before = LogEntry.objects.count()
    assert before > 0  # the world's own setup was audited, so an entry would show
    for stream in (False, True):
        response = httpx.post(
            f"{world.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {world.alice_key}"},
            json={"model": "acme-chat", "messages": HI, "stream": stream},
            timeout=10,
        )
        assert response.status_code == 200
    wait_for_usage(2)
    assert LedgerEntry.objects.filter(kind=LedgerKind.USAGE).count() == 2
    assert LogEntry.objects.count() == before


def test_it_records_the_actor_and_key_of_a_change_served_over_asgi(world):
    staff = UserFactory(username="stella", is_staff=True)
    key, plain = apikey_create(user=staff, name="ops-script", permissions=["manage"])
    link = ModelLink.objects.get(model=world.chat)
    response = httpx.patch(
        f"{world.url}/api/v1/ai/links/{link.pk}",
        headers={"Authorization": f"Bearer {plain}"},
        json={"requests_per_minute": 7},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    entry = LogEntry.objects.filter(object_pk=str(link.pk), action=LogEntry.Action.UPDATE).get()
    assert entry.actor == staff and entry.remote_addr == "127.0.0.1"
    assert entry.additional_data["api_key"]["id"] == key.pk
    assert entry.changes_dict == {"requests_per_minute": ["None", "7"]}
