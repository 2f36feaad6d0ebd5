"""Allocation properties on synthetic topologies (hypothesis) and the built-in strategies."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sutazai_hwopt.config import HardwareConfig
from sutazai_hwopt.resources import AgentDemand, Topology
from sutazai_hwopt.resources.allocation import allocate, nice_for_priority
from sutazai_hwopt.resources.planning import validate_allocation
from sutazai_hwopt.resources.strategies import LoadBasedAllocator, NumaAllocator


@st.composite
def cases(draw):
    topo = Topology.synthetic(nodes=draw(st.integers(1, 3)), cores_per_node=draw(st.integers(1, 4)),
                              threads_per_core=draw(st.integers(1, 2)), memory_per_node_mb=2048)
    n = draw(st.integers(0, 16))
    demands = [AgentDemand(f"a{i}", draw(st.integers(0, 10)),
                           draw(st.floats(0.25, float(len(topo.cpus)))), draw(st.integers(0, 3000)), i)
               for i in range(n)]
    cfg = HardwareConfig(exclusive_priority=draw(st.integers(0, 10)),
                         exclusive_pool_fraction=draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])),
                         enable_numa=draw(st.booleans()), oversubscription=draw(st.sampled_from([1.0, 2.0, 4.0])))
    return topo, demands, cfg


def _max_excl(topo, cfg):
    return max(0, min(math.floor(len(topo.cores) * cfg.exclusive_pool_fraction),
                      len(topo.cores) - cfg.shared_pool_min_cores))


PROPS = settings(max_examples=150, deadline=None)


@PROPS
@given(cases())
def test_no_exclusive_cpu_twice_and_every_agent_has_cpus(case):
    """No exclusive CPU goes to two agents or to the shared pool; every agent gets >= 1 allowed CPU."""
    topo, demands, cfg = case
    alloc = allocate(topo, demands, cfg)
    validate_allocation("static", alloc, demands, topo.cpus)  # raises on any violation
    excl = [c for p in alloc.placements.values() if p.exclusive for c in p.cpus]
    assert len(excl) == len(set(excl))
    assert alloc.shared_pool and not alloc.shared_pool & set(excl)
    assert len({tuple(sorted(c)) for c in topo.cores if c <= alloc.exclusive_pool}) <= _max_excl(topo, cfg)


@PROPS
@given(cases())
def test_smt_siblings_stay_together(case):
    """An exclusive grant is a union of whole physical cores (siblings never split between agents)."""
    topo, demands, cfg = case
    for p in allocate(topo, demands, cfg).placements.values():
        if p.exclusive:
            assert all(core <= p.cpus or not core & p.cpus for core in topo.cores)


@PROPS
@given(cases())
def test_priorities_respected_when_short(case):
    """A demoted agent could not have fit even with every lower-priority exclusive grant taken back."""
    topo, demands, cfg = case
    alloc = allocate(topo, demands, cfg)
    tpc = topo.threads_per_core
    by_id = {d.agent_id: d for d in demands}
    cores_of = {aid: len(p.cpus) // tpc for aid, p in alloc.placements.items() if p.exclusive}
    spare = _max_excl(topo, cfg) - sum(cores_of.values())
    for aid in cores_of:
        assert by_id[aid].priority >= cfg.exclusive_priority
    for d in demands:
        p = alloc.placements[d.agent_id]
        if d.priority >= cfg.exclusive_priority and not p.exclusive:
            lower = sum(c for aid, c in cores_of.items() if by_id[aid].priority < d.priority)
            need = math.ceil(math.ceil(d.cpu_cores - 1e-9) / tpc)
            assert lower + spare < need, (d, alloc.placements)
    # Shared weights never favour a lower priority.
    shared = sorted((d.priority, alloc.placements[d.agent_id].weight) for d in demands
                    if not alloc.placements[d.agent_id].exclusive)
    assert [w for _, w in shared] == sorted(w for _, w in shared)


@PROPS
@given(cases())
def test_numa_local_when_possible(case):
    """An exclusive agent spans nodes only when no node had room at its turn; NUMA shared agents stay local."""
    topo, demands, cfg = case
    alloc = allocate(topo, demands, cfg)
    taken: set[int] = set()
    for aid in alloc.exclusive_order:
        p = alloc.placements[aid]
        nodes = {topo.node_of(c) for c in p.cpus}
        if len(nodes) > 1:
            room = max(len(n.cpus - taken) for n in topo.nodes)
            assert room < len(p.cpus)
        taken |= p.cpus
    if cfg.enable_numa:
        for p in alloc.placements.values():
            if not p.exclusive:
                assert len({topo.node_of(c) for c in p.cpus}) == 1


@PROPS
@given(cases())
def test_strict_numa_never_spans(case):
    """The numa strategy never splits an exclusive agent across nodes."""
    topo, demands, cfg = case
    for p in NumaAllocator().allocate(topo, demands, cfg).placements.values():
        assert len({topo.node_of(c) for c in p.cpus}) == 1


@PROPS
@given(cases())
def test_oversubscription_bounded_and_reported(case):
    """Shared quotas never exceed what the mode permits; exceeding demand is reported as a warning."""
    topo, demands, cfg = case
    alloc = allocate(topo, demands, cfg)
    quotas = sum(p.quota for p in alloc.placements.values() if not p.exclusive)
    assert quotas <= cfg.oversubscription * alloc.shared_capacity + 1e-6
    over = alloc.shared_demand > cfg.oversubscription * alloc.shared_capacity + 1e-9
    assert over == any("oversubscribed" in w for w in alloc.warnings)


def test_131_agents_on_two_cores():
    """131 agents asking for 2 cores each: one exclusive core at most, the rest shared and reported."""
    topo = Topology.synthetic(nodes=1, cores_per_node=2)
    demands = [AgentDemand(f"agent_{i:03d}", 10 if i == 0 else i % 8, 2.0, 256, i) for i in range(131)]
    alloc = allocate(topo, demands, HardwareConfig())
    assert alloc.exclusive_order == [] or len(alloc.exclusive_pool) == 1
    assert alloc.oversubscription > 2.0 and alloc.warnings


def test_load_based_shrinks_idle_and_keeps_busy():
    """load_based sizes by measured load: an idle high-priority agent releases its exclusive cores."""
    topo = Topology.synthetic(nodes=1, cores_per_node=8)
    cfg = HardwareConfig(exclusive_priority=8, exclusive_pool_fraction=0.75)  # 6 of 8 cores
    busy = AgentDemand("busy", 9, 4.0, order=0, load=3.9)
    idle = AgentDemand("idle", 9, 4.0, order=1, load=0.01)
    alloc = LoadBasedAllocator().allocate(topo, [busy, idle], cfg)
    assert len(alloc.placements["busy"].cpus) == 4
    assert len(alloc.placements["idle"].cpus) == 1 and alloc.placements["idle"].exclusive
    prio = allocate(topo, [busy, idle], cfg)  # by request both want 4 of a 6-core pool
    assert not prio.placements["idle"].exclusive and "demoted" in prio.placements["idle"].note


@pytest.mark.parametrize(("prio", "nice"), [(10, -5), (0, 10), (5, 2)])
def test_nice_mapping(prio, nice):
    """Priority maps linearly onto the mode's nice range (10 -> nice_min, 0 -> nice_max)."""
    assert nice_for_priority(prio, HardwareConfig()) == nice


def test_make_plan_is_a_function_of_its_arguments(spawn):
    """A plan comes from topology, config, agents and strategies alone; the same inputs give the same changes."""
    from sutazai_hwopt.resources import AgentProcess
    from sutazai_hwopt.resources.planning import make_plan
    from sutazai_hwopt.resources.registry import Agent, Requirements
    from sutazai_hwopt.resources.strategies import PriorityAllocator, PriorityScheduler

    topo = Topology.synthetic(nodes=1, cores_per_node=4, threads_per_core=1, memory_per_node_mb=2048)
    pid = spawn().pid
    agents = [Agent("hi", AgentProcess.of(pid), Requirements(cpu_cores=1, priority=9), 0.0),
              Agent("lo", AgentProcess.of(pid), Requirements(cpu_cores=1, priority=1), 0.0)]
    cfg = HardwareConfig()
    plans = [make_plan(topo, cfg, agents, "mine", PriorityAllocator(), PriorityScheduler(), {}) for _ in range(2)]
    assert plans[0].strategy == "mine" and set(plans[0].placements) == {"hi", "lo"}
    assert [(c.knob, c.new, c.agent_id) for c in plans[0].changes] == \
        [(c.knob, c.new, c.agent_id) for c in plans[1].changes]
    assert all(c.reason == "plan mine" for c in plans[0].changes)
    assert not plans[0].applied and not plans[0].results


def test_find_drifts_from_expected_and_observed():
    """Equal values are no drift, different ones are; a gone process is reported but not healed, an
    unreadable value is a drift that is not healed either."""
    from sutazai_hwopt.resources.verify import Observation, find_drifts, heal_changes

    expected = {("nice", 1, None): ("a", 5), ("affinity", 1, None): ("a", [0]),
                ("nice", 2, None): ("b", 3), ("ionice", 1, None): ("a", "x")}
    observed = {("nice", 1, None): Observation(5), ("affinity", 1, None): Observation([0, 1]),
                ("nice", 2, None): Observation(missing="process gone"),
                ("ionice", 1, None): Observation(unreadable="cannot read: EPERM")}
    drifts = {(d.knob, d.agent_id): d for d in find_drifts(expected, observed)}
    assert not drifts[("nice", "a")].drifted
    assert drifts[("affinity", "a")].drifted and drifts[("affinity", "a")].actual == [0, 1]
    assert not drifts[("nice", "b")].drifted and drifts[("nice", "b")].error == "process gone"
    assert drifts[("ionice", "a")].drifted and drifts[("ionice", "a")].error.startswith("cannot read")
    changes = heal_changes(list(drifts.values()))
    assert [(c.knob, c.new, c.pid, c.reason) for c in changes] == [("affinity", [0], 1, "heal")]
