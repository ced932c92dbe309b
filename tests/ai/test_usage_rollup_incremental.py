"""The incremental rollup: only what changed, identical to a rebuild, late and out-of-order events."""

import io
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count

import pytest
from django.core.management import call_command
from django.db import connection

from ai.models import RollupPeriod, RollupState, UsageEvent, UsageRollup, UsageSample
from ai.services import usage as usage_service
from ai.services import usage_prune, usage_rollup

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)
REQUEST_IDS = count()
ROLLUP_FIELDS = [
    f.name for f in UsageRollup._meta.concrete_fields if f.name not in ("id", "period")
]


def _event(at, *, user_id=1, model_id=1, status="ok", latency=100, ttft=None, prompt=10, **more):
    return UsageEvent(
        created_at=at,
        request_id=f"req_inc_{next(REQUEST_IDS)}",
        user_id=user_id,
        model_id=model_id,
        route="chat.completions",
        status=status,
        prompt_tokens=prompt,
        completion_tokens=prompt // 2,
        cost=Decimal(prompt) / 1000,
        latency_ms=latency,
        ttft_ms=ttft,
        **more,
    )


def _add(*events):
    for event in events:
        event.save()
    return events[0] if len(events) == 1 else events


def _random_event(rng, at):
    return _event(
        at,
        user_id=rng.choice((1, 2)),
        organisation_id=rng.choice((None, 7)),
        api_key_id=rng.choice((None, 11)),
        status=rng.choice(("ok", "ok", "ok", "upstream_error", "lost")),
        latency=rng.randrange(1, 5000),
        ttft=rng.choice((None, rng.randrange(1, 500))),
        prompt=rng.randrange(0, 200),
    )


def _rollups():
    """Every rollup row's content (not its id), in a stable order."""
    return sorted(
        UsageRollup.objects.values_list("period", *ROLLUP_FIELDS), key=lambda row: str(row)
    )


def _raw_requests(period):
    sums = defaultdict(int)
    for event in UsageEvent.objects.all():
        start = event.created_at.replace(minute=0, second=0, microsecond=0)
        if period == RollupPeriod.DAY:
            start = start.replace(hour=0)
        sums[(start, event.user_id, event.model_id)] += 1
    return dict(sums)


def _rolled_requests(period):
    sums = defaultdict(int)
    for row in UsageRollup.objects.filter(period=period):
        sums[(row.bucket_start, row.user_id, row.model_id)] += row.requests
    return dict(sums)


def test_incremental_runs_give_exactly_what_a_rebuild_gives(monkeypatch):
    # A small sample cap, so that hours overflow their reservoirs and days merge samples.
    monkeypatch.setattr(usage_service, "PERCENTILE_SAMPLES", 15)
    rng = random.Random(19)
    now = NOW
    for _ in range(10):
        now += timedelta(minutes=25)
        batch = [_random_event(rng, now - timedelta(seconds=rng.randrange(600))) for _ in range(80)]
        # Late ones: reconciled or flushed after an outage, with timestamps up to 3 days old.
        batch += [
            _random_event(rng, now - timedelta(minutes=rng.randrange(4320))) for _ in range(8)
        ]
        UsageEvent.objects.bulk_create(batch)
        usage_rollup(now=now)
    incremental = _rollups()

    assert usage_rollup(now=now, rebuild=True) > 0

    assert incremental == _rollups()
    # Hours past the cap (sampled), and days merging sampled hours.
    successes = UsageRollup.objects.values_list("period", "requests", "errors")
    assert {period for period, requests, errors in successes if requests - errors > 15} == {
        RollupPeriod.HOUR,
        RollupPeriod.DAY,
    }
    for period in (RollupPeriod.HOUR, RollupPeriod.DAY):
        assert _rolled_requests(period) == _raw_requests(period)


def test_a_late_event_recomputes_only_its_hour_and_its_day():
    _add(*(_event(NOW - timedelta(hours=hours)) for hours in (1, 20, 30, 50)))
    usage_rollup(now=NOW)
    before = dict(UsageRollup.objects.values_list("id", "bucket_start"))

    late = _add(_event(NOW - timedelta(hours=30, minutes=10), latency=900))
    assert usage_rollup(now=NOW + timedelta(minutes=1)) == 1

    hour = late.created_at.replace(minute=0, second=0, microsecond=0)
    after = dict(UsageRollup.objects.values_list("id", "bucket_start"))
    rewritten = {bucket for pk, bucket in after.items() if pk not in before}
    assert rewritten == {hour, hour.replace(hour=0)}
    assert UsageRollup.objects.get(period=RollupPeriod.HOUR, bucket_start=hour).requests == 2
    assert _rolled_requests(RollupPeriod.DAY) == _raw_requests(RollupPeriod.DAY)


def test_a_run_with_no_new_events_rewrites_nothing():
    _add(_event(NOW - timedelta(hours=2)), _event(NOW - timedelta(hours=26)))
    usage_rollup(now=NOW)
    rows = list(UsageRollup.objects.order_by("id").values_list("id", flat=True))

    assert usage_rollup(now=NOW + timedelta(minutes=1)) == 0

    assert list(UsageRollup.objects.order_by("id").values_list("id", flat=True)) == rows


def test_a_lower_id_that_becomes_visible_after_a_higher_one_is_counted():
    # What concurrent writers do on PostgreSQL: ids are drawn at insert, seen at commit.
    usage_rollup(now=NOW)
    first, delayed, last = _add(*(_event(NOW + timedelta(minutes=m)) for m in (1, 2, 3)))
    delayed_id = delayed.pk
    delayed.delete()  # not committed yet, as far as the next run can see
    usage_rollup(now=NOW + timedelta(minutes=4))
    assert UsageRollup.objects.get(period=RollupPeriod.HOUR).requests == 2

    delayed.pk = delayed_id
    delayed.save(force_insert=True)  # its transaction commits now
    usage_rollup(now=NOW + timedelta(minutes=5))

    assert UsageRollup.objects.get(period=RollupPeriod.HOUR).requests == 3
    assert UsageRollup.objects.get(period=RollupPeriod.DAY).requests == 3
    assert first.pk < delayed_id < last.pk


def test_ids_older_than_the_safety_window_are_not_read_again(settings):
    settings.USAGE_ROLLUP_SAFETY_SECONDS = 600
    usage_rollup(now=NOW)
    event = _add(_event(NOW + timedelta(minutes=1)))
    usage_rollup(now=NOW + timedelta(minutes=2))
    assert RollupState.objects.get().rolled_id < event.pk  # still re-read by the next runs

    usage_rollup(now=NOW + timedelta(minutes=13))

    state = RollupState.objects.get()
    assert state.rolled_id == event.pk
    assert [top for _, top in state.seen] == [event.pk]  # only the last run's, inside the window
    assert usage_rollup(now=NOW + timedelta(minutes=14)) == 0


def test_an_insert_missed_past_the_window_is_counted_by_a_rebuild(settings):
    usage_rollup(now=NOW)
    early, late = _add(_event(NOW + timedelta(minutes=1)), _event(NOW + timedelta(minutes=2)))
    early_id = early.pk
    early.delete()
    usage_rollup(now=NOW + timedelta(minutes=3))
    usage_rollup(now=NOW + timedelta(minutes=30))  # past the window: rolled up to ``late``
    early.pk = early_id
    early.save(force_insert=True)  # a transaction that stayed open for half an hour
    usage_rollup(now=NOW + timedelta(minutes=31))
    assert UsageRollup.objects.get(period=RollupPeriod.HOUR).requests == 1

    call_command("usage_rollup", "--rebuild", stdout=io.StringIO())

    assert UsageRollup.objects.get(period=RollupPeriod.HOUR).requests == 2
    assert late.pk > early_id


def test_the_rebuild_command_says_how_many_rows_it_wrote(capsys):
    _add(_event(NOW - timedelta(hours=1)), _event(NOW - timedelta(hours=3), user_id=2))
    call_command("usage_rollup", "--rebuild")
    assert capsys.readouterr().out.strip() == "2 hourly rollup rows written"
    assert UsageRollup.objects.filter(period=RollupPeriod.DAY).count() == 2


def test_a_day_merges_its_hours_samples_into_one_uniform_sample(monkeypatch):
    monkeypatch.setattr(usage_service, "PERCENTILE_SAMPLES", 40)
    day = NOW.replace(hour=0, minute=0)
    # Hour 1: 300 requests at 10 ms; hour 2: 100 at 1000 ms. Each hour keeps 40 values;
    # the day's 40 come from both by their weight, about 30 and 10.
    _add(*(_event(day + timedelta(hours=1, seconds=s), latency=10) for s in range(300)))
    _add(*(_event(day + timedelta(hours=2, seconds=s), latency=1000) for s in range(100)))
    usage_rollup(now=NOW)

    rollup = UsageRollup.objects.get(period=RollupPeriod.DAY)
    assert rollup.requests == 400
    assert (rollup.latency_p50_ms, rollup.latency_p95_ms) == (10.0, 1000.0)
    assert UsageSample.objects.count() == 2


def test_a_late_event_before_the_prune_horizon_leaves_its_day_alone(settings):
    settings.USAGE_RETENTION_DAYS = 2
    _add(*(_event(NOW - timedelta(days=4, minutes=m)) for m in range(3)))
    usage_rollup(now=NOW)
    assert usage_prune(now=NOW) == 3
    old_day = UsageRollup.objects.get(period=RollupPeriod.DAY)

    _add(_event(NOW - timedelta(days=4, minutes=30)))  # long after its day was pruned
    usage_rollup(now=NOW + timedelta(minutes=1))

    assert UsageRollup.objects.get(period=RollupPeriod.DAY).requests == old_day.requests == 3


def test_prune_deletes_whole_days_and_their_samples_and_keeps_the_rest(settings):
    settings.USAGE_RETENTION_DAYS = 2
    # 2 days ago this morning: its day (Nov 18) is the first one kept.
    kept = _add(_event(NOW - timedelta(days=2, hours=2)))
    _add(_event(NOW - timedelta(days=3)), _event(NOW - timedelta(days=3, hours=1)))
    usage_rollup(now=NOW)

    assert usage_prune(now=NOW, batch_size=1) == 2

    assert list(UsageEvent.objects.values_list("id", flat=True)) == [kept.pk]
    assert set(UsageSample.objects.values_list("bucket_start__day", flat=True)) == {18}
    assert UsageRollup.objects.filter(period=RollupPeriod.DAY).count() == 2
    assert RollupState.objects.get().pruned_before == datetime(2026, 11, 18, tzinfo=UTC)


def test_prune_keeps_events_the_rollup_has_not_counted_yet(settings):
    settings.USAGE_RETENTION_DAYS = 2
    usage_rollup(now=NOW)
    _add(_event(NOW - timedelta(days=5)))  # arrived after the last run
    assert usage_prune(now=NOW) == 0
    assert UsageEvent.objects.count() == 1


def test_the_first_run_after_an_upgrade_keeps_the_rollups_of_a_partly_pruned_first_day():
    first_day = datetime(2026, 11, 17, tzinfo=UTC)
    UsageRollup.objects.create(period=RollupPeriod.DAY, bucket_start=first_day, requests=50)
    _add(_event(first_day + timedelta(hours=23)), _event(NOW - timedelta(hours=1)))

    usage_rollup(now=NOW)

    assert UsageRollup.objects.get(period=RollupPeriod.DAY, bucket_start=first_day).requests == 50
    assert UsageRollup.objects.filter(period=RollupPeriod.DAY).count() == 2
    assert RollupState.objects.get().pruned_before == first_day + timedelta(days=1)


def test_the_beat_task_can_rebuild():
    from ai.tasks import usage_rollup_task

    _add(_event(NOW - timedelta(hours=1)))
    usage_rollup_task.apply(kwargs={"rebuild": True})
    assert RollupState.objects.get().rebuilt_at is not None
    assert UsageRollup.objects.filter(period=RollupPeriod.HOUR).count() == 1


# An event inserted by another connection, in a transaction left open.
_SLOW_INSERT = (
    f"INSERT INTO {UsageEvent._meta.db_table} (created_at, request_id, route, status,"
    " is_stream, prompt_tokens, completion_tokens, cache_read_tokens, cache_write_tokens,"
    " reasoning_tokens, images, is_estimated, cost, latency_ms, attempts, error,"
    " model_name, user_id, model_id) VALUES (%s, 'req_slow', 'chat.completions', 'ok',"
    " false, 1, 1, 0, 0, 0, 0, false, 0, 5, 1, '', '', 1, 1) RETURNING id"
)


@pytest.mark.django_db(transaction=True)
def test_an_insert_committed_late_by_another_connection_is_counted_on_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("issue 19: out-of-order commits need PostgreSQL (set DATABASE_URL)")
    import psycopg

    usage_rollup(now=NOW)  # the first run: a rebuild, under the exact watermark
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"],
        port=db["PORT"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname=db["NAME"],
    ) as other:
        low_id = other.execute(_SLOW_INSERT, (NOW + timedelta(minutes=1),)).fetchone()[0]
        high = _add(_event(NOW + timedelta(minutes=2)))  # committed first, with a higher id
        usage_rollup(now=NOW + timedelta(minutes=3))
        assert UsageRollup.objects.get(period=RollupPeriod.HOUR).requests == 1
        other.commit()

    usage_rollup(now=NOW + timedelta(minutes=4))

    assert low_id < high.pk
    assert UsageRollup.objects.get(period=RollupPeriod.HOUR).requests == 2
    assert UsageRollup.objects.get(period=RollupPeriod.DAY).requests == 2


def test_prune_deletes_in_statements_of_at_most_one_batch(settings):
    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    settings.USAGE_RETENTION_DAYS = 2
    _add(*(_event(NOW - timedelta(days=4, minutes=m)) for m in range(5)))
    usage_rollup(now=NOW)

    with CaptureQueriesContext(db) as queries:
        assert usage_prune(now=NOW, batch_size=2) == 5

    table = UsageEvent._meta.db_table
    deletes = [q["sql"] for q in queries if q["sql"].startswith(f'DELETE FROM "{table}"')]
    assert len(deletes) == 3  # 2 + 2 + 1 rows: no statement holds more than a batch
    assert not UsageEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_rebuild_waits_for_open_inserts_before_it_sets_its_watermark_on_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("issue 19: the rebuild's table lock is PostgreSQL's (set DATABASE_URL)")
    import threading

    import psycopg
    from django.db import connections

    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"],
        port=db["PORT"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname=db["NAME"],
    ) as other:
        other.execute(_SLOW_INSERT, (NOW + timedelta(minutes=1),))  # drawn, not committed
        high = _add(_event(NOW + timedelta(minutes=2)))

        def rebuild():
            try:
                usage_rollup(now=NOW + timedelta(minutes=3), rebuild=True)
            finally:
                connections.close_all()

        thread = threading.Thread(target=rebuild)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive()  # held back by the open insert
        other.commit()
        thread.join(timeout=30)

    assert RollupState.objects.get().rolled_id == high.pk  # every id below it is counted
    assert UsageRollup.objects.get(period=RollupPeriod.HOUR).requests == 2


@pytest.mark.django_db(transaction=True)
def test_a_run_while_another_holds_the_lock_returns_at_once_on_postgresql(settings):
    if connection.vendor != "postgresql":
        pytest.skip("issue 19: row locks are PostgreSQL's (set DATABASE_URL)")
    import psycopg

    settings.USAGE_RETENTION_DAYS = 2
    usage_rollup(now=NOW)
    _add(_event(NOW + timedelta(minutes=1)), _event(NOW - timedelta(days=5)))
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"],
        port=db["PORT"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname=db["NAME"],
    ) as other:
        other.execute(f"SELECT * FROM {RollupState._meta.db_table} FOR UPDATE")  # a long run

        assert usage_rollup(now=NOW + timedelta(minutes=2)) == 0
        assert usage_prune(now=NOW + timedelta(minutes=2)) == 0

    assert usage_rollup(now=NOW + timedelta(minutes=3)) == 2  # the next run catches up
    assert UsageEvent.objects.count() == 2
