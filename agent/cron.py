"""Standard 5-field cron expressions on APScheduler 3, keeping cron's own meaning.

Two traps: APScheduler numbers day-of-week from Monday = 0 (cron: Sunday = 0, and 7 = Sunday), and
it ANDs day-of-month with day-of-week where cron ORs them when both are restricted.
"""
from __future__ import annotations

import re

from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_DOW_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]  # cron order: 0 = Sunday


class CronError(ValueError):
    pass


def _dow_number(tok: str) -> int:
    t = tok.lower()
    if t in _DOW_NAMES:
        return _DOW_NAMES.index(t)
    if t.isdigit() and 0 <= int(t) <= 7:
        return int(t)  # 7 stays 7 so that 5-7 and 7-7 are ranges; the caller folds it onto Sunday
    raise CronError(f"day of week {tok!r} is not 0-7 or sun-sat")


def _dow_field(field: str) -> str:
    """Translate cron's day-of-week field to APScheduler's names (an explicit list)."""
    if field in ("*", "?"):
        return "*"
    days = set()
    for item in field.split(","):
        m = re.fullmatch(r"(\*|[A-Za-z0-9]+)(?:-([A-Za-z0-9]+))?(?:/(\d+))?", item)
        if not m:
            raise CronError(f"day of week {item!r} is not understood")
        start, end, step = m.group(1), m.group(2), m.group(3)
        if start == "*":
            lo, hi = 0, 6
        else:
            lo = _dow_number(start)
            hi = _dow_number(end) if end else (max(lo, 6) if step else lo)
        if step is not None and int(step) == 0:
            raise CronError("a step of 0 in day of week")
        if hi < lo:
            raise CronError(f"day of week range {item!r} runs backwards")
        days.update(d % 7 for d in range(lo, hi + 1, int(step or 1)))
    # By name, which APScheduler reads the same way cron does.
    return ",".join(_DOW_NAMES[d] for d in sorted(days))


def parse_cron(expr: str, timezone=None):
    """Return an APScheduler trigger for a 5-field cron expression; CronError when it is bad."""
    text = MACROS.get(expr.strip().lower(), expr.strip())
    fields = text.split()
    if len(fields) != 5:
        raise CronError(f"want 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}")
    minute, hour, dom, month, dow = fields
    try:
        dow_ap = _dow_field(dow)
        kw = dict(minute=minute, hour=hour, month=month.lower(), timezone=timezone)
        restricted_dom = dom not in ("*", "?")
        restricted_dow = dow not in ("*", "?")
        if restricted_dom and restricted_dow:  # cron ORs the two day fields
            return OrTrigger([CronTrigger(day=dom, **kw), CronTrigger(day_of_week=dow_ap, **kw)])
        return CronTrigger(day=dom if restricted_dom else "*", day_of_week=dow_ap, **kw)
    except CronError:
        raise
    except ValueError as e:
        raise CronError(str(e)) from None
