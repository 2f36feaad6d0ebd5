"""The seed document runs as written: every ```python block against the library, every ```json block as a config.

``tests/seed/reference.md`` is the user's reference document, copied into the repository so that a clean clone
(CI) has it; where the shared original sits beside the project (``../shared/seed`` or ``/work/shared/seed``) the copy
must equal it.

Each Python block runs in a fresh interpreter (a real agent process: ``assign_cores`` and ``register_agent`` place
the process that calls them, as the seed means) as ``prelude + block + epilogue``:

* the **prelude** defines only the names the seed uses without defining them (``optimizer``, ``pool_manager``,
  ``model_data``, ``coordinator``, ``load_balancer``, ``profiler``, ``system_metrics``, ``custom_optimization_action``,
  ``send_to_prometheus``, ``gpu_allocator``, ``ml_scheduler``, ``app`` and its handlers, and the library classes the
  seed never imports), each built from the real library objects in a throwaway namespace and a temporary state
  directory. Where the seed's call would use shared defaults (the cache's namespace ``"sutazai"``) the prelude's
  definition fills in the throwaway one, and says so;
* the **block** is the seed's text. A block with ``await`` runs inside an ``async def`` (the seed shows it inside
  some coroutine); the others run at module level. The one textual change: ``duration=300`` (five minutes of
  profiling) becomes ``duration=SEED_DURATION_S``, a prelude variable of one to two seconds;
* the **epilogue** checks that the block did what the seed says, then releases everything (pools destroyed,
  tiers destroyed, kernel settings rolled back), in a ``finally`` so a failing block cleans up too.

The JSON block is written as ``hardware_optimization.json`` and loaded with ``load_config(dir)``: its values are the
configuration, and those a process can observe without changing the host act (pool size, scheduler policy).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from sutazai_hwopt.config import HardwareSection, load_config
from sutazai_hwopt.testing import throwaway_namespace

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "tests" / "seed" / "reference.md"
SHARED_DIRS = (ROOT.parent / "shared" / "seed", Path("/work/shared/seed"))
SEED_FILE = "000_5d374ede2cad0b84.txt"
_FENCE = re.compile(r"^```(python|json)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)

#: The only textual adaptation: the seed profiles for 300 s; the test for SEED_DURATION_S (set by the prelude).
LONG_DURATION = "duration=300"
SHORT_DURATION = "duration=SEED_DURATION_S"


def seed_blocks(kind: str) -> list[str]:
    return [m.group(2) for m in _FENCE.finditer(SEED.read_text(encoding="utf-8")) if m.group(1) == kind]


def test_reference_copy_matches_the_shared_seed() -> None:
    """The in-repo copy is the user's document, byte for byte, wherever the shared original is reachable."""
    copy = SEED.read_bytes()
    assert b"SutazAI Hardware Optimization Suite" in copy
    found = [d / SEED_FILE for d in SHARED_DIRS if (d / SEED_FILE).is_file()]
    if not found:
        pytest.skip("no shared seed beside the project (a clean clone): the in-repo copy is the reference")
    for original in found:
        assert original.read_bytes() == copy, f"tests/seed/reference.md differs from {original}"


COMMON = '''
import asyncio, os, sys
import numpy as np
NS, STATE = sys.argv[1], sys.argv[2]
MiB = 1024**2
_cleanups = []          # run in reverse at the end, whatever happened
'''


@dataclass(frozen=True)
class Spec:
    """How one seed block runs: ``marker`` identifies it in the seed, the prelude defines its missing names."""

    marker: str
    prelude: str
    epilogue: str


SPECS = [
    Spec("optimizer.assign_cores", prelude='''
from sutazai_hwopt import HardwareOptimizationMaster
SEED_DURATION_S = 2.0   # the seed's duration=300 (five minutes) shortened: the one textual change
# `optimizer`: the master in balanced mode (automatic pool: 1024 MiB + headroom), journal in a temporary directory
optimizer = HardwareOptimizationMaster(mode="balanced", state_dir=STATE, memory_namespace=NS)
_cleanups.append(optimizer.close)
_cleanups.append(optimizer.rollback)
_cleanups.append(lambda: "shared" in optimizer.memory.pools() and optimizer.memory.destroy_pool("shared"))
''', epilogue='''
agent = optimizer.coordinator.agent("agent_001")
assert agent.pid == os.getpid() and agent.requirements.cpu_cores == 2 and agent.requirements.priority == 8
assert os.sched_getaffinity(0) == set(agent.cpus), (os.sched_getaffinity(0), agent.cpus)
assert optimizer.memory.stats("shared")["used"] >= 1024 * MiB
assert profile["samples"] >= 2 and "agent_001" in profile["agent_profiles"], sorted(profile)
'''),
    Spec("pool_manager.create_pool", prelude='''
from sutazai_hwopt import MemoryPoolManager
# `pool_manager`: a manager of the throwaway namespace. The seed allocates in pool "data_buffer" without creating it:
# the prelude creates it (1 GiB, like the seed's "model_weights").
pool_manager = MemoryPoolManager(namespace=NS)
_cleanups.append(pool_manager.close)
_cleanups.append(lambda: [pool_manager.destroy_pool(p) for p in pool_manager.pools()])
pool_manager.create_pool("data_buffer", size=1024**3)
''', epilogue='''
assert sorted(pool_manager.pools()) == ["data_buffer", "model_weights"]
assert pool_manager.stats("model_weights")["capacity"] == 1024**3
info = pool_manager.block_info("agent_002", block_id)
assert info["held_by_agent"] == 1 and info["refs"] == 2 and info["nbytes"] == 512 * MiB
'''),
    Spec("cache = IntelligentCacheSystem", prelude='''
from sutazai_hwopt import IntelligentCacheSystem as _Library
def IntelligentCacheSystem(config):
    """The library class with the throwaway namespace filled in (the seed's config names none: "sutazai")."""
    return _Library({**config, "namespace": NS})
# `model_data`: 4 MiB of float32 weights
model_data = np.arange(MiB, dtype=np.float32)
''', epilogue='''
_cleanups.append(cache.destroy)
assert level in ("L1", "L2", "L3") and np.array_equal(np.asarray(data), model_data), level
stats = cache.stats()
assert stats["levels"]["L2"]["budget"] <= 1024 * MiB and stats["levels"]["L3"]["budget"] <= 4096 * MiB
'''),
    Spec("coordinator.register_agent", prelude='''
from sutazai_hwopt import ResourcePoolCoordinator
# `coordinator`: the resource pool coordinator with its journal in a temporary directory
coordinator = ResourcePoolCoordinator(state_dir=STATE)
_cleanups.append(coordinator.close)
_cleanups.append(coordinator.rollback)
''', epilogue='''
agent = coordinator.agent("agent_001")
assert agent.pid == os.getpid() and agent.requirements.memory_mb == 1024 and agent.requirements.gpu_memory_mb == 0
assert coordinator.stats()["last_plan"]["strategy"] == "load_based"
assert os.sched_getaffinity(0) == set(agent.cpus)
'''),
    Spec("load_balancer.register_service", prelude='''
from sutazai_hwopt.balancer import BackendService, DynamicLoadBalancer, RequestType
# `load_balancer`: a balancer with the default configuration (no health-check task started)
load_balancer = DynamicLoadBalancer()
''', epilogue='''
assert service.service_id == "agent_001" and service.weight == 1.5 and service.max_connections == 100
'''),
    Spec("profiler.run_comprehensive_analysis", prelude='''
from sutazai_hwopt import PerformanceProfiler
SEED_DURATION_S = 1.0   # the seed's duration=300 (five minutes) shortened: the one textual change
# `profiler`: sampling this process as agent_001 twice a second; `system_metrics`: its latest host metrics
profiler = PerformanceProfiler(agents={"agent_001": os.getpid()}, interval_s=0.5)
_cleanups.append(profiler.close)
profiler.sample(); profiler.sample()
system_metrics = profiler.system_metrics()
''', epilogue='''
assert results["samples"] >= 3 and isinstance(results["bottlenecks"], list)
assert any("agent_001" in group["agents"] for group in agent_profiles.values()), agent_profiles   # by container
assert isinstance(bottlenecks, list)
'''),
    Spec("eliminator = BottleneckEliminator", prelude='''
from sutazai_hwopt import BottleneckEliminator, PerformanceProfiler
# `system_metrics`: this host's metrics from two profiler passes
with PerformanceProfiler() as _p:
    _p.sample(); _p.sample()
    system_metrics = _p.system_metrics()
''', epilogue='''
settings = eliminator.settings
assert settings.auto_fix and settings.prediction_enabled and settings.mode == "balanced"
'''),
    Spec("class CustomBottleneckStrategy", prelude='''
from sutazai_hwopt.eliminator import Action, EliminationStrategy
# `custom_optimization_action`: a low-risk action calling the hook "custom.fix", judged on custom:queue.depth
custom_optimization_action = Action("custom_fix", "drain the custom queue", "low", "custom:queue.depth",
                                    hook="custom.fix", guards=())
''', epilogue='''
from sutazai_hwopt import BottleneckEliminator, PerformanceProfiler
depth = {"n": 500}
with PerformanceProfiler() as prof:
    elim = BottleneckEliminator({"mode": "balanced", "auto_fix": True, "validation_window_s": 0.2}, profiler=prof)
    elim.add_strategy(CustomBottleneckStrategy())
    elim.register_hook("custom.fix", lambda **kw: depth.update(n=0))
    elim.register_metric("queue.depth", lambda: float(depth["n"]))
    res = asyncio.run(elim.eliminate_bottleneck("custom_pattern_queue", {}))
assert res.status == "resolved" and depth["n"] == 0, res.to_dict()
assert res.outcomes[0].action.strategy == "CustomBottleneckStrategy"
'''),
    Spec("optimizer.register_metric_callback", prelude='''
from prometheus_client import CollectorRegistry, Gauge
from sutazai_hwopt import HardwareOptimizationMaster
from sutazai_hwopt.resources.strategies import PriorityAllocator, PriorityScheduler
optimizer = HardwareOptimizationMaster(mode="balanced", state_dir=STATE, memory_namespace=NS)
coordinator = optimizer.coordinator
_cleanups.append(optimizer.close)
_cleanups.append(optimizer.rollback)
registry = CollectorRegistry()
placed = Gauge("seed_agents_placed", "agents in the last placement", registry=registry)
def send_to_prometheus(metrics):
    """`send_to_prometheus`: the placement's agent count into a prometheus_client gauge."""
    if metrics.get("kind") == "placement":
        placed.set(metrics["agents"])
alerts = []
send_to_alertmanager = alerts.append
class GpuAllocator(PriorityAllocator):
    """`gpu_allocator`: on this CPU-only host, the priority allocator registered under the name "gpu"."""
    name = "gpu"
class MlScheduler(PriorityScheduler):
    """`ml_scheduler`: the priority scheduler registered under the name "ml"."""
    name = "ml"
gpu_allocator, ml_scheduler = GpuAllocator(), MlScheduler()
''', epilogue='''
optimizer.assign_cores("agent_001", num_cores=1, priority=5)
assert registry.get_sample_value("seed_agents_placed") == 1.0
plan = coordinator.rebalance_resources(strategy="gpu", scheduler="ml")
assert plan.strategy == "gpu" and coordinator.strategies()["schedulers"].count("ml") == 1
optimizer.register_detector("seed_finding", lambda sm, ap: {"severity": "low", "message": "seed alert path"})
optimizer.profile_system(duration=1.0)
assert any(a.kind == "bottleneck" and a.message == "seed alert path" for a in alerts), alerts
'''),
    Spec('app.post("/api/optimize"', prelude='''
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from sutazai_hwopt import BottleneckEliminator, HardwareOptimizationMaster

class SeedApp(Starlette):
    """`app`: a Starlette app taking the seed's app.post(path, handler) / app.get(path, handler) registrations.
    (The host service serves these routes itself: sutazai_hwopt.host.api.create_app.)"""
    def post(self, path, handler):
        self.add_route(path, handler, methods=["POST"])
    def get(self, path, handler):
        self.add_route(path, handler, methods=["GET"])

app = SeedApp()
optimizer = HardwareOptimizationMaster(mode="conservative", state_dir=STATE, memory_namespace=NS)
eliminator = BottleneckEliminator({"mode": "conservative"}, coordinator=optimizer.coordinator)
_cleanups.append(optimizer.close)

async def optimize_system_handler(request):
    """A dry-run placement of the registered agents (nothing is changed)."""
    return JSONResponse(optimizer.rebalance(strategy="priority", dry_run=True).summary())

async def get_metrics_handler(request):
    return JSONResponse(optimizer.coordinator.stats())

async def eliminate_bottleneck_handler(request):
    """What the eliminator would do for the bottleneck type in the path (a recommendation)."""
    actions = eliminator.recommend(request.path_params["bottleneck_id"], {})
    return JSONResponse([a.to_dict() for a in actions])
''', epilogue='''
from starlette.testclient import TestClient
with TestClient(app) as client:
    assert client.post("/api/optimize").json()["agents"] == 0
    assert "topology" in client.get("/api/metrics").json()
    assert client.post("/api/eliminate/memory_pressure").status_code == 200
'''),
]


def _script(spec: Spec, block: str) -> str:
    body = block.replace(LONG_DURATION, SHORT_DURATION)
    if re.search(r"^\s*(?:\w+\s*=\s*)?await\b", body, re.M):
        run = ("async def _seed_block():\n" + textwrap.indent(body, "    ") + "    return locals()\n\n"
               "globals().update(asyncio.run(_seed_block()))\n")
    else:
        run = body
    return (COMMON + "try:\n" + textwrap.indent(spec.prelude + "\n# ---- the seed's block ----\n" + run
                                                + "\n# ---- checks ----\n" + spec.epilogue, "    ")
            + "    print('SEED-BLOCK-OK')\nfinally:\n    for _c in reversed(_cleanups):\n        _c()\n")


def _spec_for(block: str) -> Spec:
    matching = [s for s in SPECS if s.marker in block]
    assert len(matching) == 1, f"seed block matches {len(matching)} specs: {block[:80]!r}"
    return matching[0]


def test_every_block_has_exactly_one_spec() -> None:
    """Each Python block of the seed is run by one spec, and every spec runs a block (no drift either way);
    the only adapted text is the two 300-second durations."""
    blocks = seed_blocks("python")
    assert len(blocks) == len(SPECS) == 10
    assert sorted(SPECS.index(_spec_for(b)) for b in blocks) == list(range(len(SPECS)))
    assert sum(b.count(LONG_DURATION) for b in blocks) == 2


@pytest.mark.parametrize("index", range(len(SPECS)), ids=[s.marker.split("(")[0].split(" = ")[0] for s in SPECS])
def test_seed_python_block_runs(index: int) -> None:
    """The block runs as written in a fresh interpreter and does what the seed says (see the module doc)."""
    block = next(b for b in seed_blocks("python") if _spec_for(b) is SPECS[index])
    with throwaway_namespace("seed") as ns, tempfile.TemporaryDirectory(prefix="hwopt-seed-") as tmp:
        state = os.path.join(tmp, "state")
        os.mkdir(state, 0o700)
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "XDG_STATE_HOME": tmp}
        out = subprocess.run([sys.executable, "-c", _script(SPECS[index], block), ns, state],
                             capture_output=True, text=True, timeout=600, env=env, cwd=tmp)
        assert out.returncode == 0 and "SEED-BLOCK-OK" in out.stdout, out.stderr[-4000:]


def test_seed_json_block_loads_and_acts(tmp_path: Path) -> None:
    """The seed's JSON loads as hardware_optimization.json: fractions become percents, every value is in the
    configuration, and the values a process can see act: the default pool's size and the agents' scheduler policy."""
    (block,) = seed_blocks("json")
    data = json.loads(block)
    (tmp_path / HardwareSection.FILE).write_text(block)
    cfg = load_config(tmp_path)
    hw = cfg.hardware
    assert (hw.max_cpu_usage, hw.max_memory_usage) == (85.0, 80.0)
    for key in ("cache_size_mb", "shared_memory_size_mb", "prefetch_depth", "enable_numa",
                "enable_transparent_hugepages", "scheduler_policy"):
        assert getattr(hw, key) == data[key], key

    from sutazai_hwopt import HardwareOptimizationMaster
    from sutazai_hwopt.master import auto_pool_bytes

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with throwaway_namespace("seed") as ns:
        master = HardwareOptimizationMaster(cfg, state_dir=str(state), memory_namespace=ns)
        try:
            block_id = master.allocate_memory("agent_001", size_mb=4096, pool="shared")   # the whole 4 GiB pool
            assert master.memory.stats("shared")["capacity"] == auto_pool_bytes(4096)
            master.memory.free_memory("agent_001", block_id)
            master.memory.destroy_pool("shared")
            coord = master.coordinator
            coord.register_agent("agent_001", {"cpu_cores": 1, "priority": 5})
            plan = coord.rebalance_resources(strategy="priority", dry_run=True)      # touches nothing
            policies = {c.new["policy"] for c in plan.changes if c.knob == "sched_policy"}
            assert policies == {"SCHED_BATCH"}, plan.changes
        finally:
            master.close()
