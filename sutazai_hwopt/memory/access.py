"""Block-id access for the pool manager: argument checks and the per-call "resolve under the lock" step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._native import pool_table
from .._validate import check_agent_id as check_agent
from ..errors import AccessDeniedError, InvalidArgumentError, NotFoundError, StateError

if TYPE_CHECKING:
    from .manager import MemoryPoolManager, _Pool

__all__ = ["BlockAccess", "check_agent", "check_int"]


class BlockAccess:
    """``with manager._locked_block(agent, block_id) as (pool, slot, agent_index):`` (a class, not a generator
    context manager, because it runs on every call)."""

    __slots__ = ("agent_id", "block_id", "manager", "pool")

    def __init__(self, manager: MemoryPoolManager, agent_id: object, block_id: object) -> None:
        self.manager, self.agent_id, self.block_id = manager, agent_id, block_id

    def __enter__(self) -> tuple[_Pool, int, int]:
        agent_id, block_id = self.agent_id, self.block_id
        check_agent(agent_id)
        parts = block_id.split(":") if isinstance(block_id, str) else ()
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() and len(p) <= 18 for p in parts[1:]):
            raise InvalidArgumentError(f"block_id must be a string 'pool:slot:generation', got {block_id!r}")
        pool = self.manager._pool(parts[0])
        slot, gen = int(parts[1]), int(parts[2])
        pool.heap.acquire()
        try:
            if pool.t.destroyed:
                raise NotFoundError(f"pool {parts[0]!r} was destroyed")
            agent = self.manager._agent(pool, agent_id)  # type: ignore[arg-type]
            state = pool.t.core.resolve(slot, gen, agent)
            if state < 0:
                if state == pool_table.BAD_SLOT:
                    raise NotFoundError(f"unknown block {block_id!r}: pool {parts[0]!r} has "
                                        f"{len(pool.t.state)} slots")
                if state == pool_table.FREED:
                    raise StateError(f"block {block_id!r} was freed (use after free); its slot has been released")
                raise AccessDeniedError(f"agent {agent_id!r} holds no reference to block {block_id!r} "
                                        f"(never granted, or already freed by this agent)")
        except BaseException:
            pool.heap.release()
            raise
        self.pool = pool
        return pool, slot, agent

    def __exit__(self, *exc: object) -> None:
        self.pool.heap.release()


def check_int(name: str, value: object, lo: int, hi: int | None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise InvalidArgumentError(f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}], got {value}")
    return value
