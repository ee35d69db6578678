"""What the node keeps on flash across deep sleep: its boot counter and a small state document.

Writes go to a temporary file renamed over the old one, so a reset in the middle leaves the old file.
"""

import json
import os


def replace(tmp, path):
    """Rename ``tmp`` over ``path`` (littlefs replaces; FAT refuses while ``path`` exists)."""
    try:
        os.rename(tmp, path)
    except OSError:
        os.remove(path)
        os.rename(tmp, path)


def write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data)
    replace(tmp, path)


def next_boot(path, floor=0):
    """Increment and return the boot counter (the high 32 bits of every sequence number), never below ``floor``.

    The node passes a floor from the clock in seconds (deep sleep wakes are seconds apart at least), so the counter
    survives the loss of its file and a reflash; without a set clock it goes on from the file, or from 0.
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
