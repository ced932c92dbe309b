"""Instance gauges for /metrics, read from the database when Prometheus scrapes.

A custom collector rather than gauges set by the agent: the rows are the truth,
any web process can answer, and prometheus-client's multiprocess mode (where a
gauge set in the agent would need its own file) is not involved.
"""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily

from ..models import Instance, InstanceStatus


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily("switchboard_instances", "Instances by status.", labels=["status"]),
        GaugeMetricFamily(
            "switchboard_instance_restarts",
            "Automatic restarts of an instance since it was last started by hand.",
            labels=["instance"],
        ),
        GaugeMetricFamily(
            "switchboard_instance_start_seconds",
            "Seconds from an instance's latest start to its readiness.",
            labels=["instance"],
        ),
    )


class InstanceCollector:
    """Collects the instance gauges with one query per scrape."""

    def describe(self):
        # Registering calls this instead of collect(): no query at import time.
        return list(_families())

    def collect(self):
        by_status, restarts, start = _families()
        counts = dict.fromkeys(InstanceStatus.values, 0)
        rows = Instance.objects.values_list(
            "name", "status", "restart_count", "started_at", "ready_at"
        )
        for name, status, restart_count, started_at, ready_at in rows:
            counts[status] = counts.get(status, 0) + 1
            restarts.add_metric([name], restart_count)
            # Ready before started: a newer start is under way, not measured yet.
            if started_at and ready_at and ready_at >= started_at:
                start.add_metric([name], (ready_at - started_at).total_seconds())
        for status, count in counts.items():
            by_status.add_metric([status], count)
        return [by_status, restarts, start]


INSTANCES = InstanceCollector()
REGISTRY.register(INSTANCES)
