"""Ports (issue 14): an instance without a port gets one of its node's range at each start
(``assigned_port``), never one another row holds or another program listens on, and
gives it back when it stops."""

import socket

from ai.models import Instance, Node
from tests.instances.conftest import command_instance, wait_status
from tests.instances.demands import consecutive_free_ports
from tests.workers import port_range


def _range(ports: range) -> str:
    return f"{ports.start}-{ports.stop - 1}"


def test_it_assigns_a_port_of_the_range_at_each_start_and_frees_it_on_stop(agent_factory):
    ports = consecutive_free_ports(2)
    agent_factory(INSTANCE_PORT_RANGE=_range(ports)).start()
    first = wait_status(command_instance("first"), "running")
    assert (first.port, first.assigned_port) == (None, ports[0])

    Instance.objects.filter(pk=first.pk).update(desired_state="stopped")
    first = wait_status(first, "stopped")
    assert (first.port, first.assigned_port) == (None, None)

    # The port is free again: the next instance gets it.
    second = wait_status(command_instance("second"), "running")
    assert second.assigned_port == ports[0]
    # And the first, started again, gets what is left.
    Instance.objects.filter(pk=first.pk).update(desired_state="running")
    first = wait_status(first, "running")
    assert (first.port, first.assigned_port) == (None, ports[1])


def test_it_skips_ports_another_program_or_another_row_holds(agent_factory):
    ports = consecutive_free_ports(3)
    # The node's row names the range; the setting's is elsewhere.
    Node.objects.create(
        name="local",
        address="http://127.0.0.1:1",
        instance_host="127.0.0.1",
        port_range=_range(ports),
    )
    agent_factory(INSTANCE_PORT_RANGE=port_range(21000)).start()
    command_instance("fixed", port=ports[1], desired_state="stopped")

    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", ports[0]))
        holder.listen()
        placed = wait_status(command_instance("placed"), "running")
        assert placed.assigned_port == ports[2]

        # Nothing is left for one more: it fails, saying so, and holds no port.
        crowded = wait_status(command_instance("crowded"), "failed")
    assert crowded.status_reason.startswith(f"no free port in {_range(ports)} on 127.0.0.1")
    assert crowded.assigned_port is None
    # The fixed one still runs on its own port.
    fixed = Instance.objects.get(name="fixed")
    Instance.objects.filter(pk=fixed.pk).update(desired_state="running")
    fixed = wait_status(fixed, "running")
    assert fixed.port == fixed.assigned_port == ports[1]
