"""Argument checks of the pool manager's block-id API, as pure functions of their arguments.

The manager owns the side effects (finding the pool, registering the agent, taking the lock); these helpers only
validate values and turn the table core's ``resolve`` codes into the error a caller should see, so they need
nothing from the manager and nothing imports back into it.
"""

from __future__ import annotations

from .._native import pool_table
from .._validate import check_agent_id as check_agent
from ..errors import AccessDeniedError, HwoptError, InvalidArgumentError, NotFoundError, StateError

__all__ = ["check_agent", "check_int", "parse_block_id", "resolve_error"]


def check_int(name: str, value: object, lo: int, hi: int | None) -> int:
    """``value`` if it is an int (not a bool) in ``[lo, hi]`` (``hi`` None: unbounded), else InvalidArgumentError."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise InvalidArgumentError(f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}], got {value}")
    return value


def parse_block_id(block_id: object) -> tuple[str, int, int]:
    """``(pool_id, slot, generation)`` of a ``"pool:slot:generation"`` id (ASCII digits, at most 18 each).

    Raises:
        InvalidArgumentError: anything else.
    """
    parsed = pool_table.parse_block_id(block_id)     # compiled, exact str only; the same rule as below
    if parsed is not None:
        return parsed
    parts = block_id.split(":") if isinstance(block_id, str) else ()
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() and len(p) <= 18 for p in parts[1:]):
        raise InvalidArgumentError(f"block_id must be a string 'pool:slot:generation', got {block_id!r}")
    return parts[0], int(parts[1]), int(parts[2])


def resolve_error(code: int, block_id: str, agent_id: str, n_slots: int) -> HwoptError:
    """The error for a negative ``TableCore.resolve`` code (``n_slots``: the pool's block table size)."""
    if code == pool_table.BAD_SLOT:
        pool_id = block_id.split(":", 1)[0]
        return NotFoundError(f"unknown block {block_id!r}: pool {pool_id!r} has {n_slots} slots")
    if code == pool_table.FREED:
        return StateError(f"block {block_id!r} was freed (use after free); its slot has been released")
    return AccessDeniedError(f"agent {agent_id!r} holds no reference to block {block_id!r} "
                             f"(never granted, or already freed by this agent)")
