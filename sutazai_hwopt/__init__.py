"""sutazai_hwopt: let many AI agent processes share one CPU-only Linux host well.

This module only re-exports. The classes are imported lazily on first attribute access (PEP 562), so
``import sutazai_hwopt`` stays light and starts no thread; each part lives in its own subpackage.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AccessDeniedError,
    CapacityError,
    ConfigError,
    CorruptionError,
    HwoptError,
    NotFoundError,
    PoolExhaustedError,
)

#: public name -> module that defines it.
_LAZY: dict[str, str] = {
    "load_config": "sutazai_hwopt.config",
    "HwoptConfig": "sutazai_hwopt.config",
    "Cache": "sutazai_hwopt.cache",
    "cached": "sutazai_hwopt.cache",
    "MemoryPoolManager": "sutazai_hwopt.memory",
    "IntelligentCacheSystem": "sutazai_hwopt.cache.system",
    "PerformanceProfiler": "sutazai_hwopt.profiler",
    "BottleneckEliminator": "sutazai_hwopt.eliminator",
    "ResourcePoolCoordinator": "sutazai_hwopt.resources",
    "HardwareOptimizationMaster": "sutazai_hwopt.master",
    "DynamicLoadBalancer": "sutazai_hwopt.balancer",
    "BackendService": "sutazai_hwopt.balancer",
    "RequestType": "sutazai_hwopt.balancer",
    "CircuitBreaker": "sutazai_hwopt.balancer",
}

if TYPE_CHECKING:
    from .balancer import BackendService, CircuitBreaker, DynamicLoadBalancer, RequestType
    from .cache import Cache, cached
    from .cache.system import IntelligentCacheSystem
    from .config import HwoptConfig, load_config
    from .eliminator import BottleneckEliminator
    from .master import HardwareOptimizationMaster
    from .memory import MemoryPoolManager
    from .profiler import PerformanceProfiler
    from .resources import ResourcePoolCoordinator

__all__ = [
    "AccessDeniedError",
    "BackendService",
    "BottleneckEliminator",
    "Cache",
    "CapacityError",
    "CircuitBreaker",
    "ConfigError",
    "CorruptionError",
    "DynamicLoadBalancer",
    "HardwareOptimizationMaster",
    "HwoptConfig",
    "HwoptError",
    "IntelligentCacheSystem",
    "MemoryPoolManager",
    "NotFoundError",
    "PerformanceProfiler",
    "PoolExhaustedError",
    "RequestType",
    "ResourcePoolCoordinator",
    "__version__",
    "cached",
    "load_config",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sutazai_hwopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
