"""Instance quotas through /api/v1/instances (issue 14): an organisation's max_instances on
create (and on moving an instance to it), its max_running_instances on start, and
INSTANCE_MAX_INSTANCES in all. A refused write is a 409 that changes nothing."""

import pytest

from accounts.services import apikey_create
from ai.instances import services
from ai.models import DesiredState, Instance
from orgs.models import Organisation
from tests.api import conftest as management
from tests.api.conftest import MANAGE, as_key
from tests.factories import OrganisationFactory
from tests.instances import stand_in_agent

api, keys, staff = management.api, management.keys, management.staff
manager = management.manager
agent, no_agent = stand_in_agent.agent, stand_in_agent.no_agent

FAKE_COMMAND = "{python} -m fakeupstream --host {host} --port {port}"


def create(name: str, start: bool = False, **options) -> Instance:
    options = {"backend": "command", "command_override": FAKE_COMMAND, **options}
    return services.instance_create(name=name, options=options, start=start)


def body(**extra) -> dict:
    return {"backend_type": "command", "command_override": FAKE_COMMAND, **extra}


@pytest.fixture
def staff_api(api, staff, agent):
    return as_key(api, apikey_create(user=staff, name="stella-manage", permissions=MANAGE)[1])


def _refusal(response, message: str) -> None:
    assert response.status_code == 409, response.content
    assert response.json()["error"] == {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": "instance_quota_exceeded",
    }


@pytest.mark.django_db
def test_it_creates_an_instance_owned_by_an_organisation(staff_api):
    acme = OrganisationFactory(slug="acme")

    response = staff_api.post("/api/v1/instances/x", body(organisation="acme"), format="json")

    assert response.status_code == 201, response.content
    assert response.json()["options"]["organisation"] == "acme"
    assert response.json()["assigned_port"] is None
    assert Instance.objects.get(name="x").organisation == acme


@pytest.mark.django_db
def test_it_refuses_an_unknown_organisation(staff_api):
    response = staff_api.post("/api/v1/instances/x", body(organisation="nope"), format="json")

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "organisation"
    assert not Instance.objects.exists()


@pytest.mark.django_db
def test_it_refuses_to_create_more_instances_than_the_organisation_may_own(staff_api):
    OrganisationFactory(slug="acme", max_instances=1)
    create("first", organisation=Organisation.objects.get(slug="acme"))

    response = staff_api.post("/api/v1/instances/second", body(organisation="acme"), format="json")

    _refusal(response, "The organisation 'acme' may own at most 1 instances.")
    assert list(Instance.objects.values_list("name", flat=True)) == ["first"]
    # Anyone else's may still be created.
    assert staff_api.post("/api/v1/instances/mine", body(), format="json").status_code == 201


@pytest.mark.django_db
def test_it_refuses_to_move_an_instance_to_an_organisation_at_its_maximum(staff_api):
    acme = OrganisationFactory(slug="acme", max_instances=1)
    create("first", organisation=acme)
    create("loose")

    response = staff_api.put("/api/v1/instances/loose", {"organisation": "acme"}, format="json")

    _refusal(response, "The organisation 'acme' may own at most 1 instances.")
    assert Instance.objects.get(name="loose").organisation is None
    # Editing one it already owns is not a new instance for it.
    edit = staff_api.put("/api/v1/instances/first", {"restart_delay": 9}, format="json")
    assert edit.status_code == 200


@pytest.mark.django_db
def test_it_refuses_to_start_more_than_the_organisation_may_run(staff_api):
    acme = OrganisationFactory(slug="acme", max_running_instances=1)
    create("first", organisation=acme, start=True)
    create("second", organisation=acme)
    message = "The organisation 'acme' may run at most 1 instances at once; stop one of them first."

    for action in ("start", "restart"):
        response = staff_api.post(f"/api/v1/instances/second/{action}")
        _refusal(response, message)
        assert Instance.objects.get(name="second").desired_state == DesiredState.STOPPED
    created = staff_api.post("/api/v1/instances/third", body(organisation="acme"), format="json")
    _refusal(created, message)
    assert not Instance.objects.filter(name="third").exists()

    # One stops: the other may start, and the running one may restart.
    assert staff_api.post("/api/v1/instances/first/stop").status_code == 200
    assert staff_api.post("/api/v1/instances/second/start").status_code == 200
    assert staff_api.post("/api/v1/instances/second/restart").status_code == 200


@pytest.mark.django_db
def test_it_refuses_to_create_more_than_instance_max_instances(staff_api, settings):
    settings.INSTANCE_MAX_INSTANCES = 2
    create("first")
    create("second")

    response = staff_api.post("/api/v1/instances/third", body(), format="json")

    _refusal(response, "This deployment allows at most 2 instances (INSTANCE_MAX_INSTANCES).")
    assert Instance.objects.count() == 2


@pytest.mark.django_db
def test_an_outsider_starting_an_instance_is_refused_before_any_quota(api, keys, staff):
    OrganisationFactory(slug="acme", max_running_instances=0)
    create("x", organisation=Organisation.objects.get(slug="acme"))

    for persona in ("anonymous", "charlie"):
        response = as_key(api, keys.get(persona)).post("/api/v1/instances/x/start")
        assert response.status_code in (401, 403)
        assert "acme" not in response.content.decode()
    assert Instance.objects.get(name="x").desired_state == DesiredState.STOPPED
