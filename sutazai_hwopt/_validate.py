"""Argument rules every part shares, defined once: the agent-id rule, JSON-safe numbers, alignment.

This module sits at the bottom of the layers (it imports only :mod:`.errors`), so any part may use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import InvalidArgumentError

__all__ = ["AGENT_ID_MAX_BYTES", "check_agent_id", "finite", "round_up"]

#: Longest agent id, in UTF-8 bytes: the shared pool tables store an agent's id in a fixed 48-byte field
#: (``memory.tables.AGENT_DTYPE``), and an id is one name across coordinator, pools, cache and profiler.
AGENT_ID_MAX_BYTES = 48


def check_agent_id(agent_id: object) -> str:
    """The one agent-id rule: a non-empty string of at most 48 UTF-8 bytes without NUL; returns it.

    Raises:
        InvalidArgumentError: anything else (the message says the rule and the value).
    """
    if (not isinstance(agent_id, str) or not agent_id or "\x00" in agent_id
            or len(agent_id.encode("utf-8", "surrogatepass")) > AGENT_ID_MAX_BYTES):
        raise InvalidArgumentError(f"agent_id must be a non-empty string of at most {AGENT_ID_MAX_BYTES} UTF-8 "
                                   f"bytes without NUL, got {agent_id!r}")
    return agent_id


def finite(value: Any) -> Any:
    """``value`` made safe for strict JSON: NaN and infinities become None, recursively.

    Mappings (keys as strings), lists and tuples are walked; numpy scalars become Python numbers; an object
    with a ``to_dict()`` method is converted through it. Anything else is returned as is.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, bytes, int)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):  # a numpy scalar
        return finite(value.item())
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return finite(to_dict())
    return value


def round_up(n: int, align: int) -> int:
    """``n`` rounded up to a multiple of ``align`` (> 0)."""
    return (n + align - 1) // align * align
