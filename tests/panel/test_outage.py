"""A dependency's outage: tried once per interval, logged once per interval."""

import logging

from panel import outage as outage_module
from panel.outage import Outage


def test_a_thousand_failures_log_one_line_per_interval(clock, caplog):
    outage = Outage("Redis", "limited links answer 503")
    caplog.set_level(logging.INFO, logger="panel.outage")
    for _ in range(1000):
        outage.failed(ConnectionError("refused"))
        clock.now += 0.01
    assert len(caplog.records) == 1
    clock.now += outage_module.LOG_INTERVAL
    outage.failed(ConnectionError("refused"))
    assert len(caplog.records) == 2
    assert "1000 failed call(s)" in caplog.records[1].getMessage()
    outage.recovered()
    outage.recovered()
    assert [r.getMessage() for r in caplog.records[2:]] == ["Redis answers again after 40.0 s."]


def test_while_down_it_is_tried_once_per_retry_interval(clock, settings):
    outage = Outage("Redis", "")
    assert outage.may_try() and outage.may_try()  # up: always
    outage.failed(ConnectionError("refused"))
    assert not outage.may_try()
    clock.now += settings.GATEWAY_OUTAGE_RETRY_SECONDS
    assert outage.may_try()
    assert not outage.may_try()  # the attempt is claimed by the first caller
    outage.recovered()
    assert outage.may_try()
