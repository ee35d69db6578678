"""What the node keeps on flash across deep sleep: its boot counter and a small state document.

Writes go to a temporary file renamed over the old one, so a reset in the middle leaves the old file.
"""

import json
import os


def write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data)
    os.rename(tmp, path)


def next_boot(path, floor=0):
    """Increment and return the boot counter (the high 32 bits of every sequence number).

    A missing or unreadable counter restarts from ``floor`` (the flash tool seeds it, see docs/edge.md).
    """
    try:
        with open(path) as f:
            boot = int(f.read())
    except (OSError, ValueError):
        boot = floor
    boot = max(boot, floor) + 1
    write(path, str(boot))
    return boot


def load(path):
    """The state document, or an empty one if it is missing or damaged (the node then starts afresh)."""
    try:
        with open(path) as f:
            doc = json.load(f)
        if isinstance(doc, dict):
            return doc
    except (OSError, ValueError):
        pass
    return {}


def save(path, doc):
    write(path, json.dumps(doc))
