"""Bottleneck eliminator: strategies propose actions, the mode gates them, validation keeps or rolls back.

See docs/eliminator.md. Kernel changes go through the resource coordinator's journal (owner ``eliminator``).
"""

from __future__ import annotations

from .actions import MODE_RISKS, RISK_LEVELS, Action, ActionOutcome, EliminationResult, HookResult, KernelChange
from .context import EliminationContext
from .eliminator import KNOWN_TYPES, BottleneckEliminator
from .strategies import (
    BackendOverloadStrategy,
    CpuContentionStrategy,
    EliminationStrategy,
    IoSaturationStrategy,
    MemoryPressureStrategy,
    builtin_strategies,
)
from .validation import MetricSource, ProfilerSource, judge, metric_value

__all__ = [
    "KNOWN_TYPES", "MODE_RISKS", "RISK_LEVELS", "Action", "ActionOutcome", "BackendOverloadStrategy",
    "BottleneckEliminator", "CpuContentionStrategy", "EliminationContext", "EliminationResult", "EliminationStrategy",
    "HookResult", "IoSaturationStrategy", "KernelChange", "MemoryPressureStrategy", "MetricSource", "ProfilerSource",
    "builtin_strategies", "judge", "metric_value",
]
