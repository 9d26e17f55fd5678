"""A namespace's metadata: a small JSON object a deployment keeps about itself (who runs
it, what it is for, a schema version), read with `bq.metadata()` and merged with
`bq.update_metadata({...})`.

It lives in one Redis hash, `Keys.metadata`: each key as a field `m:<key>` holding its
JSON value, and two fields bo_queue keeps, `initialized_at` (set by the first update,
never again) and `last_updated` (every update), both ISO 8601 strings in UTC. The merge
is one Lua script (lua/metadata_update.lua), so two updates at once both land and a merge
that would take the whole past `METADATA_LIMIT_BYTES` writes nothing. It sits with the
monitor, not in the kernel: nothing that submits or runs tasks reads it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bo_queue.core import scripts
from bo_queue.errors import ValidationError, shown
from bo_queue.validation import check_json, utc

if TYPE_CHECKING:
    from bo_queue.core.kernel import Core

__all__ = ["METADATA_LIMIT_BYTES", "RESERVED", "NamespaceMetadata"]

METADATA_LIMIT_BYTES = 64 * 1024  # keys and JSON values, summed over the merged metadata
MAX_KEY_CHARS = 200
RESERVED = frozenset({"initialized_at", "last_updated"})  # bo_queue's own fields
_PREFIX = "m:"


class NamespaceMetadata:
    """The metadata of `bq`'s namespace (see the module docstring)."""

    def __init__(self, bq: Core) -> None:
        self.bq = bq
        self._update = scripts.register(bq.redis, "metadata_update.lua")

    def get(self) -> dict[str, Any]:
        """The metadata: every key with its value, and `initialized_at` and `last_updated`
        (absent until the first update)."""
        bq = self.bq
        with bq.broker_errors():
            stored: dict[str, str] = bq.redis.hgetall(bq.keys.metadata)  # type: ignore[assignment]
        out: dict[str, Any] = {}
        for field, value in sorted(stored.items()):
            if field.startswith(_PREFIX):
                out[field[len(_PREFIX):]] = json.loads(value)
            elif field in RESERVED:
                out[field] = value
        return out

    def update(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Merge `values` into the metadata (a shallow merge: a key given replaces its old
        value, keys not given stay) and return the whole. `values` must be a mapping of
        non-empty string keys (at most 200 characters, not `initialized_at` or
        `last_updated`) to JSON values; the merged keys and values together at most
        METADATA_LIMIT_BYTES. Anything else is a ValidationError, and nothing is written."""
        pairs = _checked(values)
        bq = self.bq
        now = utc(time.time()).isoformat()
        with bq.broker_errors():
            reply: Any = self._update(
                args=[bq.keys.namespace, now, METADATA_LIMIT_BYTES, _PREFIX, *pairs])
        if int(reply[0]) != 1:
            raise ValidationError(f"metadata would be {int(reply[1])} bytes; the limit is "
                                  f"{METADATA_LIMIT_BYTES}")
        return self.get()


def _checked(values: Mapping[str, Any]) -> list[str]:
    """`values` as field, JSON pairs for the script, or ValidationError."""
    if not isinstance(values, Mapping):
        raise ValidationError(f"metadata must be a JSON object, not {shown(values)}")
    pairs: list[str] = []
    for key, value in values.items():
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            raise ValidationError(
                f"a metadata key must be a string of 1 to {MAX_KEY_CHARS} characters, "
                f"not {shown(key)}")
        if key in RESERVED:
            raise ValidationError(f"metadata key {key!r} is kept by bo_queue")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"metadata key {shown(key)} is not UTF-8") from None
        pairs += [_PREFIX + key, check_json(value, f"metadata[{key!r}]", METADATA_LIMIT_BYTES)]
    return pairs
