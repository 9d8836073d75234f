"""Cron schedules keep standard cron's meaning; intervals and backoff stay within their bounds."""
from datetime import date, datetime, timedelta, timezone

import pytest

from agent.cron import CronError, parse_cron
from agent.schedule import backoff_delay

UTC = timezone.utc
WEDNESDAY = datetime(2024, 1, 3, 12, 0, tzinfo=UTC)


def fires(expr, count, start=WEDNESDAY):
    """The next `count` fire times of a cron expression from `start` on (UTC, `start` itself included)."""
    trigger = parse_cron(expr, UTC)
    out, prev, now = [], None, start
    for _ in range(count):
        t = trigger.get_next_fire_time(prev, now)
        out.append(t)
        prev, now = t, t + timedelta(seconds=1)
    return out


@pytest.mark.parametrize("expr", ["0 3 * * 0", "0 3 * * 7", "0 3 * * sun", "0 3 * * SUN"])
def test_sunday_is_0_7_and_sun(expr):
    """Day of week 0, 7 and `sun` all mean Sunday (APScheduler alone would read 0 as Monday)."""
    times = fires(expr, 3)
    assert times[0] == datetime(2024, 1, 7, 3, 0, tzinfo=UTC)
    assert all(t.weekday() == 6 and (t.hour, t.minute) == (3, 0) for t in times)


def test_every_minute_on_sunday_starts_at_sunday_midnight():
    """`* * * * 7` next fires at the first minute of the coming Sunday, then each minute."""
    assert fires("* * * * 7", 2) == [datetime(2024, 1, 7, 0, 0, tzinfo=UTC), datetime(2024, 1, 7, 0, 1, tzinfo=UTC)]


def test_weekday_range_skips_the_weekend():
    """`0 0 * * 1-5` fires at midnight Monday to Friday only."""
    times = fires("0 0 * * 1-5", 10)
    assert {t.weekday() for t in times} == {0, 1, 2, 3, 4}
    assert [t.date() for t in times[:3]] == [date(2024, 1, 4), date(2024, 1, 5), date(2024, 1, 8)]


@pytest.mark.parametrize("dow, days", [
    ("7-7", {6}), ("5-7", {4, 5, 6}), ("6-7", {5, 6}), ("0", {6}), ("sun-7", set(range(7))), ("0-7", set(range(7))),
    ("1-5", {0, 1, 2, 3, 4}), ("mon,wed,fri", {0, 2, 4}), ("*/2", {6, 1, 3, 5}), ("1-5/2", {0, 2, 4}),
])
def test_day_of_week_fields(dow, days):
    """Day-of-week ranges, lists and steps pick the days cron picks (weekday(): Monday = 0, Sunday = 6)."""
    assert {t.weekday() for t in fires(f"0 0 * * {dow}", 14)} == days


def test_day_of_month_and_day_of_week_are_ORed():
    """With both day fields restricted, cron fires on either: the 13th of a month or any Friday."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    times = [t for t in fires("0 0 13 * 5", 20, start) if t < datetime(2024, 3, 1, tzinfo=UTC)]
    expected = [start + timedelta(days=n) for n in range(60)]
    expected = [d for d in expected if d.day == 13 or d.weekday() == 4]
    assert times == expected
    assert datetime(2024, 2, 13, tzinfo=UTC) in times  # a Tuesday, on the strength of the day of month


def test_macros_and_month_names():
    """@daily / @hourly and month names work as in cron."""
    assert fires("@daily", 1) == [datetime(2024, 1, 4, 0, 0, tzinfo=UTC)]
    assert fires("@hourly", 2)[1] == datetime(2024, 1, 3, 13, 0, tzinfo=UTC)
    assert fires("0 0 1 mar *", 1) == [datetime(2024, 3, 1, 0, 0, tzinfo=UTC)]


@pytest.mark.parametrize("expr", ["61 * * * *", "* 24 * * *", "* * 32 * *", "* * * 13 *", "* * * * 8",
                                  "* * * *", "* * * * * *", "x * * * *", "* * * * mon-sun/0", "* * * * 5-1",
                                  "* * * * 7-1"])
def test_bad_cron_is_an_error(expr):
    """Out-of-range values, a wrong number of fields, and nonsense are refused."""
    with pytest.raises(CronError):
        parse_cron(expr, UTC)


def test_backoff_grows_and_is_capped():
    """The wait after repeated failures starts near 2 s, doubles, and never exceeds max_backoff."""
    lows = [backoff_delay(n, 600, rng=lambda: 0.0) for n in range(1, 40)]
    highs = [backoff_delay(n, 600, rng=lambda: 1.0) for n in range(1, 40)]
    assert 1 <= lows[0] <= highs[0] <= 3
    assert lows == sorted(lows) and lows[5] > 2 * lows[3]
    assert all(0 < lo <= hi <= 600 for lo, hi in zip(lows, highs))
    assert highs[-1] == 600
    assert backoff_delay(0, 600) == 0
