"""/api/v1/orgs and members: owners and admins run their own organisation only."""

from orgs.models import Membership, Organisation, Role
from tests.api.conftest import as_key
from tests.factories import MembershipFactory, OrganisationFactory


def test_it_shows_charlie_no_organisation(api, keys, acme):
    OrganisationFactory(slug="globex")
    body = as_key(api, keys["charlie"]).get("/api/v1/orgs").json()
    assert body["count"] == 0 and body["results"] == []
    slugs = [o["slug"] for o in as_key(api, keys["bob"]).get("/api/v1/orgs").json()["results"]]
    assert slugs == ["acme"]


def test_it_lets_staff_create_an_org_with_its_owner(api, keys, charlie):
    body = {"name": "Globex", "slug": "globex", "tier": "paid", "owner": "charlie"}
    response = as_key(api, keys["staff"]).post("/api/v1/orgs", body, format="json")
    assert response.status_code == 201
    org = Organisation.objects.get(slug="globex")
    assert org.tier == "paid"
    assert org.memberships.get().user == charlie and org.memberships.get().role == Role.OWNER


def test_it_refuses_a_duplicate_slug_naming_the_field(api, keys, acme):
    body = {"name": "Acme 2", "slug": "acme"}
    response = as_key(api, keys["staff"]).post("/api/v1/orgs", body, format="json")
    assert (response.status_code, response.json()["error"]["param"]) == (400, "slug")


def test_it_keeps_the_tier_for_administrators(api, keys, acme):
    url = "/api/v1/orgs/acme"
    response = as_key(api, keys["alice"]).patch(url, {"tier": "enterprise"}, format="json")
    assert (response.status_code, response.json()["error"]["param"]) == (400, "tier")
    acme.refresh_from_db()
    assert acme.tier == "free"
    assert as_key(api, keys["staff"]).patch(url, {"tier": "paid"}, format="json").status_code == 200
    acme.refresh_from_db()
    assert acme.tier == "paid"


def test_it_lets_an_owner_add_a_member_and_change_roles(api, keys, acme, dave):
    client = as_key(api, keys["alice"])
    response = client.post(
        "/api/v1/orgs/acme/members", {"username": "dave", "role": "admin"}, format="json"
    )
    assert response.status_code == 201
    assert response.json() == {**response.json(), "user_id": dave.pk, "role": "admin"}
    url = f"/api/v1/orgs/acme/members/{dave.pk}"
    assert client.patch(url, {"role": "member"}, format="json").json()["role"] == "member"
    assert Membership.objects.get(user=dave, organisation=acme).role == Role.MEMBER


def test_it_keeps_owner_roles_to_owners(api, keys, acme, bob, dave):
    membership = Membership.objects.get(user=bob, organisation=acme)
    membership.role = Role.ADMIN
    membership.save()
    client = as_key(api, keys["bob"])
    response = client.post(
        "/api/v1/orgs/acme/members", {"username": "dave", "role": "owner"}, format="json"
    )
    assert response.status_code == 403
    alice_id = acme.memberships.get(role=Role.OWNER).user_id
    assert client.delete(f"/api/v1/orgs/acme/members/{alice_id}").status_code == 403
    assert acme.memberships.filter(role=Role.OWNER).count() == 1
    assert not acme.memberships.filter(user=dave).exists()


def test_it_keeps_the_last_owner(api, keys, acme, alice):
    url = f"/api/v1/orgs/acme/members/{alice.pk}"
    response = as_key(api, keys["alice"]).patch(url, {"role": "member"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "last_owner"
    assert as_key(api, keys["staff"]).delete(url).status_code == 400
    assert acme.memberships.get(user=alice).role == Role.OWNER


def test_it_hides_other_orgs_members_from_an_owner(api, keys, acme, charlie):
    globex = OrganisationFactory(slug="globex")
    MembershipFactory(user=charlie, organisation=globex, role=Role.OWNER)
    client = as_key(api, keys["alice"])
    assert client.get("/api/v1/orgs/globex/members").status_code == 404
    assert client.delete(f"/api/v1/orgs/globex/members/{charlie.pk}").status_code == 404
    assert globex.memberships.filter(user=charlie).exists()


def _add(api, key, **body):
    return as_key(api, key).post("/api/v1/orgs/acme/members", body, format="json")


def test_it_lets_an_owner_add_someone_she_shares_an_organisation_with_by_email(
    api, keys, acme, dave
):
    response = _add(api, keys["alice"], email="DAVE@example.com")
    assert response.status_code == 201
    assert response.json() == {**response.json(), "user_id": dave.pk, "username": "dave"}
    assert "email" not in response.json()
    assert acme.memberships.filter(user=dave, role=Role.MEMBER).exists()


def test_it_answers_an_unknown_and_another_tenants_user_alike(api, keys, acme, charlie):
    globex = OrganisationFactory(slug="globex")
    MembershipFactory(user=charlie, organisation=globex, role=Role.OWNER)
    for field, foreign, unknown in (
        ("username", "charlie", "nobody"),
        ("email", "charlie@example.com", "nobody@example.com"),
    ):
        foreign_answer = _add(api, keys["alice"], **{field: foreign})
        unknown_answer = _add(api, keys["alice"], **{field: unknown})
        assert foreign_answer.status_code == unknown_answer.status_code == 400
        assert foreign_answer.json() == unknown_answer.json()
        assert foreign_answer.json()["error"]["param"] == field
        assert "charlie" not in foreign_answer.content.decode()
    assert not acme.memberships.filter(user=charlie).exists()


def test_it_lets_staff_add_anyone(api, keys, acme, charlie):
    response = _add(api, keys["staff"], username="charlie")
    assert response.status_code == 201
    assert acme.memberships.filter(user=charlie).exists()


def test_it_needs_exactly_one_of_username_and_email(api, keys, acme, dave):
    for body in ({}, {"username": "dave", "email": "dave@example.com"}):
        response = _add(api, keys["alice"], **body)
        assert (response.status_code, response.json()["error"]["param"]) == (400, "username")
    assert not acme.memberships.filter(user=dave).exists()


def test_it_names_the_field_used_when_the_user_is_already_a_member(api, keys, acme, bob):
    response = _add(api, keys["alice"], email="bob@example.com")
    assert response.status_code == 400
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (
        "already_member",
        "email",
    )
