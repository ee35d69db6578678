"""The crisis-gauge reporting rhythm: when to report, when to raise an alarm, how long to sleep.

Below the observation-start level a node reports once a day (heartbeat); at or above it, on every wake (every
``active_s`` <= 600 s); in flood mode every ``flood_s``; a change of stage is reported at once, and a change that
crosses a named threshold goes out as an alarm. Time is counted in slept seconds, not read from a clock.
"""

from khnode import stages


def plan(before, after, cfg, quiet_s, flood, forced=False):
    """Return ``(report, alarm, sleep_s)`` for a wake that moved the stage from ``before`` to ``after``.

    ``quiet_s`` is how long the node has slept since its last report; ``flood`` is flood mode; ``forced`` a
    report asked for by command.
    """
    alarm = stages.is_alarm(before, after)
    report = alarm or forced or flood or after != before or after >= 1 or quiet_s >= cfg["heartbeat_s"]
    return report, alarm, period(after, cfg, flood)


def period(stage, cfg, flood):
    """Seconds until the next wake."""
    if flood:
        return cfg["flood_s"]
    return cfg["active_s"] if stage >= 1 else cfg["sample_s"]
