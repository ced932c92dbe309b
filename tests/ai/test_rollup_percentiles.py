"""Latency and time-to-first-token percentiles in the hourly and daily rollups."""

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from ai.models import RollupPeriod, UsageEvent, UsageRollup
from ai.services import usage as usage_service
from ai.services import usage_rollup
from ai.services.usage import percentile
from tests.factories import AIModelFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)
HOUR = datetime(2026, 11, 20, 10, tzinfo=UTC)


REQUEST_IDS = count()


def _event(at, *, user, model, latency, ttft=None, status="ok"):
    return UsageEvent.objects.create(
        created_at=at,
        request_id=f"req_pct_{next(REQUEST_IDS)}",
        user=user,
        model=model,
        route="chat.completions",
        status=status,
        latency_ms=latency,
        ttft_ms=ttft,
    )


def _rollup(period, **ids):
    return UsageRollup.objects.get(period=period, **ids)


def test_it_interpolates_percentiles_like_percentile_cont():
    # PostgreSQL: percentile_cont(0.95) within group (order by x) over 1..10 is 9.55.
    assert percentile(list(range(10, 0, -1)), 0.95) == pytest.approx(9.55)
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([7], 0.95) == 7
    assert percentile([], 0.5) is None


def test_it_rolls_up_exact_percentiles_of_an_hour(alice, bob):
    model = AIModelFactory(name="pct")
    # Ten successful requests: latencies 100..1000 ms; TTFT on the five streamed ones.
    for i in range(1, 11):
        ttft = i * 10 if i % 2 == 0 else None
        _event(HOUR + timedelta(minutes=i), user=alice, model=model, latency=i * 100, ttft=ttft)
    # A failed request and a lost one do not count towards the percentiles.
    _event(
        HOUR + timedelta(minutes=30),
        user=alice,
        model=model,
        latency=60_000,
        status="upstream_error",
    )
    _event(HOUR + timedelta(minutes=31), user=alice, model=model, latency=0, status="lost")
    # Bob's requests are another rollup row, with their own percentiles.
    _event(HOUR + timedelta(minutes=5), user=bob, model=model, latency=5)

    usage_rollup(now=NOW)

    hour = _rollup(RollupPeriod.HOUR, user_id=alice.pk, bucket_start=HOUR)
    assert (hour.requests, hour.errors) == (12, 2)
    assert hour.latency_p50_ms == 550.0  # between 500 and 600
    assert hour.latency_p95_ms == pytest.approx(955.0)  # 900 + 0.55 * 100
    assert hour.ttft_p50_ms == 60.0  # of 20, 40, 60, 80, 100
    assert hour.ttft_p95_ms == pytest.approx(96.0)  # 80 + 0.8 * 20
    bobs = _rollup(RollupPeriod.HOUR, user_id=bob.pk)
    assert (bobs.latency_p50_ms, bobs.latency_p95_ms, bobs.ttft_p50_ms) == (5.0, 5.0, None)


def test_a_day_has_percentiles_over_all_its_events_not_of_its_hours(alice):
    model = AIModelFactory(name="pct-day")
    # Hour 8: 1, 2, 3 ms; hour 9: 100 ms. The median of the day is 2.5, of the hours' medians 51.
    for minute, latency in ((1, 1), (2, 2), (3, 3)):
        _event(HOUR - timedelta(hours=2, minutes=-minute), user=alice, model=model, latency=latency)
    _event(HOUR - timedelta(minutes=50), user=alice, model=model, latency=100, ttft=40)

    usage_rollup(now=NOW)

    day = _rollup(RollupPeriod.DAY, user_id=alice.pk)
    assert day.requests == 4
    assert day.latency_p50_ms == 2.5
    assert day.latency_p95_ms == pytest.approx(85.45)  # 3 + 0.85 * 97
    assert day.ttft_p50_ms == day.ttft_p95_ms == 40.0
    hours = UsageRollup.objects.filter(period=RollupPeriod.HOUR).order_by("bucket_start")
    assert [h.latency_p50_ms for h in hours] == [2.0, 100.0]


def test_a_second_run_gives_the_same_percentiles(alice):
    model = AIModelFactory(name="pct-again")
    for i in range(1, 6):
        _event(HOUR + timedelta(minutes=i), user=alice, model=model, latency=i, ttft=i)
    usage_rollup(now=NOW)
    first = list(UsageRollup.objects.values_list("latency_p95_ms", "ttft_p50_ms"))
    usage_rollup(now=NOW + timedelta(minutes=5))
    assert list(UsageRollup.objects.values_list("latency_p95_ms", "ttft_p50_ms")) == first


def test_past_the_sample_cap_percentiles_come_from_a_bounded_sample(alice, monkeypatch):
    monkeypatch.setattr(usage_service, "PERCENTILE_SAMPLES", 50)
    model = AIModelFactory(name="pct-many")
    for i in range(1, 401):
        _event(HOUR + timedelta(seconds=i), user=alice, model=model, latency=i)

    usage_rollup(now=NOW)

    hour = _rollup(RollupPeriod.HOUR, user_id=alice.pk)
    assert hour.requests == 400
    # The exact median is 200.5; a uniform sample of 50 lands near it, every run the same.
    assert 120 <= hour.latency_p50_ms <= 280
    assert hour.latency_p95_ms > hour.latency_p50_ms
