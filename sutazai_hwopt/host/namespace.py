"""The namespace the host service owns: its shared cache tiers and default pools, created at ``deploy``.

One place configures the fleet. The daemon resolves the configuration (mode preset, then the files, then the
deploy flags), creates the namespace's shared L2 and L3 tiers and its default pools from it, and serves the result
at ``GET /api/config``. An agent that calls :func:`~sutazai_hwopt.host.client.fleet_config` (or ``connect()``)
gets the same configuration, so its private L1, prefetching and codecs match; any process that merely names the
namespace attaches the tiers and pools the daemon created, whatever sizes it asked for (a shared segment keeps
the size of its creator). A process that builds its own tiers with no daemon running works as before.

The daemon also publishes an L1 budget factor (:mod:`sutazai_hwopt.cache.l1_budget`, served as ``l1_budget``):
full at deploy, lowered by the ``cache.shrink`` remedy and raised by its undo; processes that took this
configuration scale their private L1 by it.

The segments outlive the daemon: ``stop`` leaves them for the next ``deploy`` (which attaches them again) and
``stop --purge`` removes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import HwoptConfig
from ..errors import AlreadyExistsError, HwoptError
from ..logs import get_logger

if TYPE_CHECKING:
    from ..cache.l1_budget import BudgetWord

__all__ = ["DEFAULT_POOLS", "ENABLE_ALL", "SECRET_KEYS", "NamespacePlan", "OwnedNamespace", "describe_unowned",
           "plan_for", "public_config", "served_config"]

log = get_logger("master")
MiB = 1024**2

#: The pools the daemon creates at deploy, each of ``hardware.shared_memory_size_mb`` and with
#: ``cache.compression`` as the codec of puts that name none: ``default`` is the pool of
#: :class:`~sutazai_hwopt.memory.MemoryPoolManager`'s calls, ``shared`` that of
#: :meth:`~sutazai_hwopt.master.HardwareOptimizationMaster.allocate_memory`.
DEFAULT_POOLS = ("default", "shared")

#: What ``deploy --enable-all`` turns on: every optional part (configuration overrides, applied after the files
#: and before the other flags). The mode's risk level still bounds what the eliminator applies.
ENABLE_ALL: dict[str, dict[str, Any]] = {
    "cache": {"enable_prefetch": True, "compression": "lz4"},
    "eliminator": {"auto_fix": True, "prediction_enabled": True},
    "hardware": {"enable_numa": True},
}


#: Keys never served by ``GET /api/config`` (reads are open to every local process): each agent keeps its own.
SECRET_KEYS = (("cache", "redis_hmac_key"),)


@dataclass(frozen=True)
class NamespacePlan:
    """What the daemon creates: tier sizes in bytes (0: that tier is off) and the default pools' sizes."""

    namespace: str
    l2_size: int
    l3_size: int
    budget: int
    pools: dict[str, int] = field(default_factory=dict)


def plan_for(config: HwoptConfig) -> NamespacePlan:
    """The tiers and pools ``config`` asks for, the shared tiers fitted into ``hardware.cache_size_mb``.

    ``cache_size_mb`` bounds L2 + L3 together (L1 is per process and not counted); when they exceed it, L3 gives
    way first, then L2. A tier left smaller than the least usable size (1 MiB) is off.
    """
    from ..cache.shared_index import MIN_TIER

    budget = config.hardware.cache_size_mb * MiB
    l2 = min(config.cache.l2_size, budget)
    l3 = min(config.cache.l3_size, budget - l2)
    l2, l3 = (s if s >= MIN_TIER else 0 for s in (l2, l3))
    pool = config.hardware.shared_memory_size_mb * MiB
    return NamespacePlan(config.cache.namespace, l2, l3, budget, {p: pool for p in DEFAULT_POOLS})


def served_config(config: HwoptConfig, tiers: dict[str, int]) -> HwoptConfig:
    """``config`` as agents should use it: the tier sizes replaced by those of the tiers that exist, and the
    balancers sharing the namespace's host-wide table unless the configuration names another one."""
    cache = dataclasses.replace(config.cache, l2_size=tiers.get("l2", 0), l3_size=tiers.get("l3", 0))
    balancer = (config.balancer if config.balancer.namespace
                else dataclasses.replace(config.balancer, namespace=config.cache.namespace))
    return dataclasses.replace(config, cache=cache, balancer=balancer)


def public_config(config: HwoptConfig) -> dict[str, dict[str, Any]]:
    """``config`` as JSON for ``GET /api/config``: every section, the :data:`SECRET_KEYS` set to null."""
    out = config.to_dict()
    for section, key in SECRET_KEYS:
        out[section][key] = None
    return out


def describe_unowned(config: HwoptConfig) -> dict[str, Any]:
    """``GET /api/config`` of a service that owns no namespace (driven in-process): its configuration, no tiers."""
    return {"namespace": config.cache.namespace, "config": public_config(config), "tiers": {},
            "cache_budget": config.hardware.cache_size_mb * MiB, "pools": {}, "l1_budget": None}


class OwnedNamespace:
    """The daemon's handles on the tiers and pools it created (or found from a previous deploy).

    Closing unmaps them and leaves the segments (``stop`` keeps the data for a restart); ``clean`` or
    ``stop --purge`` removes them. A tier or pool left by an earlier deploy keeps its size: the log says so, and
    :meth:`describe` reports the sizes that exist.
    """

    def __init__(self, config: HwoptConfig) -> None:
        from ..cache.l1_budget import BudgetWord
        from ..cache.shared_index import SharedTier
        from ..memory import MemoryPoolManager

        self.plan = plan_for(config)
        self.namespace = self.plan.namespace
        self._tiers: dict[str, SharedTier] = {}
        self.memory = MemoryPoolManager(self.namespace, config=config)
        self.l1_budget: BudgetWord | None = None
        try:
            #: the L1 factor agents follow (cache.shrink lowers it); a new deploy starts at the full budget
            self.l1_budget = BudgetWord.create(self.namespace)
            for level, size, entries in (("l2", self.plan.l2_size, config.cache.l2_max_entries),
                                         ("l3", self.plan.l3_size, config.cache.l3_max_entries)):
                if size:
                    tier = self._tiers[level] = SharedTier(self.namespace, level, size, max_entries=entries)
                    if tier.size != size // 4096 * 4096:
                        log.warning("%s tier of namespace %s already exists with %d bytes (asked %d); "
                                    "`stop --purge` then `deploy` to resize it", level, self.namespace,
                                    tier.size, size)
            codec = config.cache.compression   # the default codec of puts into the daemon's pools, every process
            for pool_id, size in self.plan.pools.items():
                try:
                    self.memory.create_pool(pool_id, size, compression=codec)
                except AlreadyExistsError:
                    self.memory.set_default_compression(pool_id, codec)
                    log.info("pool %s of namespace %s kept from an earlier deploy", pool_id, self.namespace)
        except BaseException:
            self.close()
            raise
        self.config = served_config(config, self.tier_sizes())
        log.info("namespace %s owned: tiers %s, pools %s", self.namespace, self.tier_sizes(),
                 sorted(self.plan.pools))

    def tier_sizes(self) -> dict[str, int]:
        """Level -> bytes of each shared tier that exists."""
        return {level: tier.size for level, tier in self._tiers.items()}

    def describe(self) -> dict[str, Any]:
        """What ``GET /api/config`` serves: the configuration agents use, the tiers and the pools."""
        pools: dict[str, Any] = {}
        for pool_id in self.plan.pools:
            try:
                pools[pool_id] = {"capacity": int(self.memory.stats(pool_id)["capacity"])}
            except HwoptError as exc:   # destroyed by someone meanwhile: say so
                pools[pool_id] = {"error": str(exc)}
        l1: dict[str, Any] | None = None
        if self.l1_budget is not None:
            state = self.l1_budget.read()
            l1 = {**state.as_dict(), "bytes": int(self.config.cache.l1_size * state.factor)}
        return {"namespace": self.namespace, "config": public_config(self.config),
                "tiers": {level.upper(): {"size": size} for level, size in self.tier_sizes().items()},
                "cache_budget": self.plan.budget, "pools": pools, "l1_budget": l1}

    def close(self) -> None:
        """Unmap the tiers and pools from the daemon; the segments stay."""
        for tier in self._tiers.values():
            tier.close()
        self._tiers.clear()
        if self.l1_budget is not None:
            self.l1_budget.close()
            self.l1_budget = None
        self.memory.close()
