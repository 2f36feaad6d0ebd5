"""Resource placement: topology, agent registry, allocation, kernel knobs, journal and rollback.

The entry point is :class:`ResourcePoolCoordinator`; :class:`Change` / :meth:`ResourcePoolCoordinator.apply_change`
is the journaled way for any component to change a kernel knob so that it can be undone.
"""

from __future__ import annotations

from .allocation import AgentDemand, Allocation, Placement
from .coordinator import ResourcePoolCoordinator
from .identity import AgentProcess
from .journal import Journal, JournalEntry, default_state_dir
from .knobs import Knob, set_thp_disabled
from .planning import Plan
from .registry import Agent, Requirements
from .strategies import Allocator, SchedSettings, Scheduler, plugin_name
from .topology import NumaNode, Topology, read_topology
from .transactions import Change, ChangeHandle, KnobResult, Transactor
from .verify import Drift

__all__ = [
    "Agent", "AgentDemand", "AgentProcess", "Allocation", "Allocator", "Change", "ChangeHandle", "Drift",
    "Journal", "JournalEntry", "Knob", "KnobResult", "NumaNode", "Placement", "Plan", "Requirements",
    "ResourcePoolCoordinator", "SchedSettings", "Scheduler", "Topology", "Transactor", "default_state_dir",
    "plugin_name", "read_topology", "set_thp_disabled",
]
