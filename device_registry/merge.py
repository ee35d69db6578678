"""JSON Merge Patch (RFC 7396): how desired deltas and reported states merge into twin documents.

A patch object merges key by key: ``null`` removes a key, an object merges recursively, anything else replaces.
A patch that is not an object replaces the whole target. The result shares nothing with its inputs.
"""

from __future__ import annotations

import copy

from kakehashi.wire import JSONObject, JSONValue


def merge_patch(target: JSONValue, patch: JSONValue) -> JSONValue:
    """The RFC 7396 merge of ``patch`` into ``target``."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: JSONObject = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def merge_document(target: JSONObject, patch: JSONObject) -> JSONObject:
    """Merge an object ``patch`` into an object ``target`` (the result is an object too)."""
    merged = merge_patch(target, patch)
    assert isinstance(merged, dict)  # an object patch always yields an object
    return merged
