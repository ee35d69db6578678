"""Median filtering of a burst of raw samples, and the fault flags of one sensor.

Pure functions over plain numbers, so CPython tests exercise the same code the node runs.
"""

STUCK = 1  # the very same value (every sample of the burst equal, and equal to the last one) stuck_n times in a row
SPIKE = 2  # the filtered value jumped more than spike_m away from the last one
RANGE = 4  # at most half of the burst was inside the sensor's range (echo lost, wire break, over-range)
NO_DATA = 8  # no sample of the burst was usable


def median(values):
    """The median of a non-empty list of numbers (mean of the middle two for an even count); None if empty."""
    n = len(values)
    if not n:
        return None
    ordered = sorted(values)
    mid = n // 2
    if n % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def assess(samples, last, same, spike_m, stuck_n):
    """Filter one burst and flag its faults.

    ``samples`` holds one value per reading, None for a reading outside the sensor's range; ``last`` is the previous
    filtered value (None if unknown) and ``same`` how many times in a row it had been repeated exactly.
    Returns ``(value, flags, same)``: value is None only with NO_DATA.
    """
    valid = [s for s in samples if s is not None]
    flags = 0
    if len(valid) * 2 <= len(samples):
        flags |= RANGE
    if not valid:
        return None, flags | NO_DATA, 0
    value = median(valid)
    if last is not None and abs(value - last) > spike_m:
        flags |= SPIKE
    flat = True
    for s in valid:
        if s != valid[0]:
            flat = False
            break
    same = same + 1 if flat and value == last else 0
    if stuck_n and same + 1 >= stuck_n:
        flags |= STUCK
    return value, flags, same
