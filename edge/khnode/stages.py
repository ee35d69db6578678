"""Crisis-gauge stages from the water level, with hysteresis so that a level wavering at a threshold cannot chatter.

Stage 0 is below the observation-start level (観測開始水位); stage k (1-5) means at or above threshold k-1 of
``NAMES``. Rising takes effect at the threshold itself; falling only once the level is ``hysteresis`` below it.
"""

NAMES = ("observe", "standby", "caution", "evacuate", "danger")
# The four thresholds of the Japanese river crisis rhythm, as codes for alarms (ASCII on the wire):
# 水防団待機水位, 氾濫注意水位, 避難判断水位, 氾濫危険水位.
ALARM_CODES = ("suibodan_taiki", "hanran_chui", "hinan_handan", "hanran_kiken")


def stage(level, thresholds, previous, hysteresis):
    """The stage for ``level`` given the stage before it; thresholds ascend, one per entry of NAMES."""
    if level is None:
        return previous
    s = previous
    top = len(thresholds)
    while s < top and level >= thresholds[s]:
        s += 1
    while s > 0 and level < thresholds[s - 1] - hysteresis:
        s -= 1
    return s


def is_alarm(before, after):
    """A change of stage that crosses one of the four named thresholds (stage 2 and up), either way."""
    return before != after and max(before, after) >= 2


def alarm_code(before, after):
    """``<direction>:<code of the highest threshold crossed>``, e.g. ``rise:hanran_chui``."""
    if after > before:
        return "rise:" + ALARM_CODES[after - 2]
    return "fall:" + ALARM_CODES[before - 2]
