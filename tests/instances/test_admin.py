"""The admin's Instances page: list, actions, the change page's command and logs, no secrets."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from ai.instances import services
from ai.models import DesiredState, Instance, InstanceStatus, Upstream
from tests.factories import AIModelFactory
from tests.instances import stand_in_agent

agent, no_agent = stand_in_agent.agent, stand_in_agent.no_agent

SECRET = "hf-secret-value-never-in-the-admin"
ARG_SECRET = "sk-arg-secret-never-in-the-admin"
COMMAND = "{python} -m fakeupstream --host {host} --port {port}"


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


def create(name="local", start=False, **options):
    options = {"backend": "command", "command_override": COMMAND, **options}
    return services.instance_create(name=name, options=options, start=start)


@pytest.fixture
def secret_instance(db):
    return create(
        "secretive",
        environment={"HF_TOKEN": SECRET, "LANG": "C.UTF-8"},
        command_override=f"{COMMAND} --api-key {ARG_SECRET}",
        extra_args=["--api-key", ARG_SECRET],
        port=8350,
    )


def url(view, *args):
    return reverse(f"admin:ai_instance_{view}", args=args)


def form_data(instance, **changes):
    """The change form as the browser sends it back: what the page showed, plus ``changes``."""
    form = _shown_form(instance)
    return {**form, **changes}


def _shown_form(instance):
    from ai.instances.admin import InstanceForm

    form = InstanceForm(instance=instance)
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if value is None or name == "name":
            continue
        if isinstance(value, bool):
            if value:
                data[name] = "on"
            continue
        data[name] = (
            field.widget.format_value(value) if name in ("environment", "extra_args") else value
        )
    return data


def test_it_lists_instances_with_status_colours_and_uptime(admin_client, db):
    create("up", start=True, port=8360)
    create("down")
    Instance.objects.filter(name="up").update(
        status=InstanceStatus.RUNNING,
        ready_at=timezone.now() - timedelta(hours=2, minutes=5),
        restart_count=2,
    )
    Instance.objects.filter(name="down").update(status=InstanceStatus.FAILED)
    html = admin_client.get(url("changelist")).content.decode()
    assert "#1a7f37" in html and "Running" in html  # green
    assert "#cf222e" in html and "Failed" in html  # red
    assert "2h 05m" in html
    assert "8360" in html
    assert "Any command" in html


def test_it_filters_and_searches_instances(admin_client, db):
    create("alpha")
    create("beta")
    Instance.objects.filter(name="beta").update(status=InstanceStatus.RUNNING)
    running = admin_client.get(url("changelist"), {"status__exact": "running"})
    assert [i.name for i in running.context["cl"].result_list] == ["beta"]
    found = admin_client.get(url("changelist"), {"q": "alp"})
    assert [i.name for i in found.context["cl"].result_list] == ["alpha"]


@pytest.mark.parametrize("page", ["changelist", "change", "delete", "history"])
def test_it_never_shows_a_secret_in_the_admin(admin_client, secret_instance, page):
    args = () if page == "changelist" else (secret_instance.pk,)
    response = admin_client.get(url(page, *args))
    assert response.status_code == 200
    html = response.content.decode()
    assert SECRET not in html
    assert ARG_SECRET not in html
    secret_instance.refresh_from_db()
    assert secret_instance.environment["HF_TOKEN"] == SECRET


def test_the_change_page_shows_the_masked_command_state_and_last_log_lines(
    admin_client, secret_instance, agent
):
    agent.logs["secretive"] = "".join(f"log line {n}\n" for n in range(80))
    Instance.objects.filter(pk=secret_instance.pk).update(
        status=InstanceStatus.FAILED, status_reason="exited with 1 at once", restart_count=4
    )
    html = admin_client.get(url("change", secret_instance.pk)).content.decode()
    shown = html.replace("&#x27;", "'")
    assert "-m fakeupstream --host 127.0.0.1 --port 8350 --api-key '********'" in shown
    assert "HF_TOKEN" in html and "C.UTF-8" in html
    assert "exited with 1 at once" in html
    assert "log line 79" in html and "log line 30" in html
    assert "log line 29\n" not in html
    assert agent.log_requests == [{"name": "secretive", "lines": ["50"]}]


def test_the_change_page_says_when_the_agent_is_not_answering(admin_client, secret_instance):
    html = admin_client.get(url("change", secret_instance.pk)).content.decode()
    assert "agent is not answering" in html


def test_it_keeps_the_secrets_when_the_masked_form_is_saved(admin_client, secret_instance):
    data = form_data(secret_instance, restart_delay="11")
    response = admin_client.post(url("change", secret_instance.pk), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    secret_instance.refresh_from_db()
    assert secret_instance.restart_delay == 11
    assert secret_instance.environment == {"HF_TOKEN": SECRET, "LANG": "C.UTF-8"}
    assert secret_instance.extra_args == ["--api-key", ARG_SECRET]
    assert secret_instance.command_override.endswith(f"--api-key {ARG_SECRET}")


def test_saving_a_running_instance_asks_for_a_restart(admin_client, db):
    instance = create("busy", start=True)
    data = form_data(instance, max_restarts="9")
    assert admin_client.post(url("change", instance.pk), data).status_code == 302
    instance.refresh_from_db()
    assert instance.max_restarts == 9
    assert instance.restart_requested_at is not None


def test_it_refuses_a_command_that_cannot_be_parsed(admin_client, db):
    instance = create("x")
    data = form_data(instance, command_override="'unbalanced {port}")
    response = admin_client.post(url("change", instance.pk), data)
    assert response.status_code == 200
    assert "command_override" in response.context["adminform"].form.errors
    instance.refresh_from_db()
    assert instance.command_override == COMMAND


def test_it_adds_an_instance_and_asks_for_it_to_run(admin_client, db):
    data = {
        "name": "added",
        "backend": "command",
        "command_override": COMMAND,
        "node": "local",
        "environment": '{"HF_TOKEN": "x"}',
        "extra_args": "[]",
        "auto_restart": "on",
        "max_restarts": "3",
        "restart_delay": "5",
        "ready_timeout": "300",
    }
    response = admin_client.post(url("add"), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    instance = Instance.objects.get(name="added")
    assert instance.desired_state == DesiredState.RUNNING
    assert instance.environment == {"HF_TOKEN": "x"}


@pytest.mark.parametrize(
    ("action", "desired"),
    [("start", DesiredState.RUNNING), ("stop", DesiredState.STOPPED), ("restart", "running")],
)
def test_the_actions_change_the_desired_state(admin_client, db, action, desired):
    instance = create("x", start=action == "stop")
    Instance.objects.filter(pk=instance.pk).update(restart_count=3)
    response = admin_client.post(
        url("changelist"), {"action": action, "_selected_action": [instance.pk]}, follow=True
    )
    assert response.status_code == 200
    instance.refresh_from_db()
    assert instance.desired_state == desired
    assert (instance.restart_requested_at is not None) == (action == "restart")
    assert instance.restart_count == (0 if action == "start" else 3)


@pytest.mark.django_db(transaction=True)
def test_an_action_nudges_the_agent_or_warns_that_it_is_down(client, superuser, settings):
    client.force_login(superuser)
    instance = create("x")
    with stand_in_agent.StandInAgent(key=settings.INSTANCE_AGENT_KEY) as stand_in:
        stand_in_agent.point_local_agent(settings, stand_in.url)
        answered = client.post(
            url("changelist"), {"action": "start", "_selected_action": [instance.pk]}, follow=True
        )
    assert stand_in.nudges == 1
    assert "not answering" not in answered.content.decode()
    down = client.post(
        url("changelist"), {"action": "stop", "_selected_action": [instance.pk]}, follow=True
    )
    assert "The agent is not answering for x" in down.content.decode()
    assert Instance.objects.get(pk=instance.pk).desired_state == DesiredState.STOPPED


def test_deleting_in_the_admin_removes_the_instance_and_its_upstreams(admin_client, db):
    instance = services.instance_create(
        name="gone",
        options={"backend": "command", "command_override": COMMAND},
        model="gone-model",
        start=False,
    )
    response = admin_client.post(url("delete", instance.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not Instance.objects.exists()
    assert not Upstream.objects.filter(name="gone").exists()


def test_the_upstream_admin_shows_and_accepts_the_instance(admin_client, db):
    instance = create("served")
    model = AIModelFactory(name="local-chat")
    add_url = reverse("admin:ai_upstream_add")
    assert 'name="instance"' in admin_client.get(add_url).content.decode()
    data = {
        "model": model.pk,
        "name": "served",
        "base_url": "",
        "instance": instance.pk,
        "provider_model_id": "served",
        "is_enabled": "on",
        "priority": "0",
        "weight": "1",
        "connect_timeout": "5",
        "first_byte_timeout": "60",
        "idle_timeout": "60",
        "total_timeout": "600",
        "api_style": "openai",
        "probe": "models",
        "health_checks-TOTAL_FORMS": "0",
        "health_checks-INITIAL_FORMS": "0",
    }
    response = admin_client.post(add_url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Upstream.objects.get(name="served").instance == instance
    page = admin_client.get(reverse("admin:ai_upstream_change", args=[instance.upstreams.get().pk]))
    assert "served" in page.content.decode()
