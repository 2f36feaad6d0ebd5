"""Every documented switch acts: each deploy flag and each configuration key named by the docs has an effect a
test observes (for the keys: `test_every_config_key_has_a_behaviour_test`). The daemon's configuration is built
as the daemon builds it (:func:`config_from_args` over the deploy flags) and run by a real :class:`HostService`
in this process; flags that only the CLI handles run the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sutazai_hwopt import IntelligentCacheSystem
from sutazai_hwopt.config import SECTION_FILES, HwoptConfig, load_config
from sutazai_hwopt.host.daemon import add_daemon_arguments, config_from_args
from sutazai_hwopt.host.namespace import ENABLE_ALL
from sutazai_hwopt.host.runtime import RuntimeDir
from sutazai_hwopt.host.segments import purge
from sutazai_hwopt.host.service import HostService
from sutazai_hwopt.profiler import PerformanceProfiler, detect_bottlenecks
from sutazai_hwopt.testing import throwaway_namespace

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


@pytest.fixture
def ns() -> Iterator[str]:
    with throwaway_namespace("sw") as name:
        yield name


@pytest.fixture
def conf(tmp_path: Path, ns: str) -> Path:
    """A configuration directory of small tiers and pools, with the optional parts off (flags turn them on)."""
    d = tmp_path / "conf"
    d.mkdir()
    (d / "cache_system.json").write_text(json.dumps({
        "namespace": ns, "l1_size": MiB, "l2_size": 2 * MiB, "l3_size": 2 * MiB, "enable_prefetch": False,
        "compression": "none", "prefetch_inline": True, "prefetch_mode": "always"}))
    (d / "hardware_optimization.json").write_text(json.dumps({"shared_memory_size_mb": 1, "cache_size_mb": 64}))
    (d / "bottleneck_eliminator.json").write_text(json.dumps({"prediction_enabled": False}))
    return d


def daemon_config(conf: Path, *flags: str) -> HwoptConfig:
    """The configuration a daemon deployed with ``flags`` (and ``--config conf``) runs."""
    parser = argparse.ArgumentParser()
    add_daemon_arguments(parser)
    return config_from_args(parser.parse_args(["--config", str(conf), *flags]))


@contextmanager
def daemon(config: HwoptConfig, tmp_path: Path) -> Iterator[tuple[HostService, HwoptConfig]]:
    """A host service owning its namespace, and the configuration it serves agents; purged afterwards."""
    svc = HostService(config, state_dir=str(tmp_path / f"journal{time.monotonic_ns()}"))
    try:
        served = svc.own_namespace()
        yield svc, HwoptConfig.from_dict(served["config"])
    finally:
        svc.close()
        purge(config.cache.namespace, force=True)


@contextmanager
def agent_cache(config: HwoptConfig) -> Iterator[IntelligentCacheSystem]:
    cache = IntelligentCacheSystem(config, loader=lambda k: str(k).encode())
    try:
        yield cache
    finally:
        cache.close()


# -- deploy flags ---------------------------------------------------------------------------------------------
def test_l1_size_reaches_every_agents_l1(conf: Path, tmp_path: Path) -> None:
    config = daemon_config(conf, "--l1-size", str(3 * MiB))
    with daemon(config, tmp_path) as (_svc, served), agent_cache(served) as cache:
        assert cache.stats()["levels"]["L1"]["budget"] == 3 * MiB


def test_l2_size_sizes_the_shared_tier_the_daemon_creates(conf: Path, tmp_path: Path) -> None:
    with daemon(daemon_config(conf), tmp_path) as (svc, _served):
        assert svc.fleet_config()["tiers"]["L2"] == {"size": 2 * MiB}             # the file's size
    with daemon(daemon_config(conf, "--l2-size", str(5 * MiB)), tmp_path) as (svc, served):
        assert svc.fleet_config()["tiers"]["L2"] == {"size": 5 * MiB}             # the flag wins
        with IntelligentCacheSystem({"namespace": served.cache.namespace, "enable_prefetch": False}) as cache:
            assert cache.stats()["levels"]["L2"]["budget"] == 5 * MiB            # what any process attaches


def test_enable_ml_turns_prefetching_on(conf: Path, tmp_path: Path) -> None:
    with daemon(daemon_config(conf), tmp_path) as (_svc, served), agent_cache(served) as cache:
        assert "prefetch" not in cache.stats()                                    # the file turned it off
    with daemon(daemon_config(conf, "--enable-ml"), tmp_path) as (_svc, served), agent_cache(served) as cache:
        assert _predicted_per_access(cache) == served.cache.prefetch_depth


def _predicted_per_access(cache: IntelligentCacheSystem) -> int:
    """Keys the prefetcher predicts from one access, once it has learnt a cycle of 8 keys."""
    keys = [f"k{i}" for i in range(8)]
    for _ in range(5):
        for k in keys:
            cache.get_or_load(k, "agent_a", lambda k: k.encode())
    before = cache.stats()["prefetch"]["predicted"]
    cache.get("k0", "agent_a")
    return int(cache.stats()["prefetch"]["predicted"] - before)


def test_prefetch_depth_reaches_the_prefetcher(conf: Path, tmp_path: Path) -> None:
    for depth in (1, 4):
        config = daemon_config(conf, "--enable-ml", "--prefetch-depth", str(depth))
        assert config.hardware.prefetch_depth == depth                            # one setting, both names
        with daemon(config, tmp_path) as (_svc, served), agent_cache(served) as cache:
            assert _predicted_per_access(cache) == depth


def _l3_stored_share(config: HwoptConfig) -> float:
    """Bytes L3 stored per byte demoted into it, after 64 zero-filled 32 KiB values overflow a 2 MiB L2."""
    with IntelligentCacheSystem(dataclasses.replace(config.cache, l1_size=0, enable_prefetch=False)) as cache:
        for i in range(64):
            cache.put(f"v{i}", bytes(32 * 1024))
        l3 = cache.stats()["levels"]["L3"]
        assert l3["raw_bytes_in"] > 0
        return float(l3["stored_bytes_in"] / l3["raw_bytes_in"])


def test_enable_compression_compresses_the_l3_tier(conf: Path, tmp_path: Path) -> None:
    with daemon(daemon_config(conf), tmp_path) as (_svc, served):
        assert _l3_stored_share(served) > 0.99                                    # the file said "none"
    with daemon(daemon_config(conf, "--enable-compression"), tmp_path) as (_svc, served):
        assert served.cache.compression == "lz4" and _l3_stored_share(served) < 0.1


def test_pool_size_sizes_the_default_pools(conf: Path, tmp_path: Path) -> None:
    from sutazai_hwopt import MemoryPoolManager

    with daemon(daemon_config(conf, "--pool-size", "3"), tmp_path) as (svc, served):
        assert {p: f["capacity"] for p, f in svc.fleet_config()["pools"].items()} == {"default": 3 * MiB,
                                                                                       "shared": 3 * MiB}
        with MemoryPoolManager(served.cache.namespace) as pm:
            assert pm.stats("default")["capacity"] == 3 * MiB
            pm.put_bytes("agent_a", bytes(2 * MiB))     # more than the file's 1 MiB pool would hold


def test_auto_fix_lets_the_eliminator_act(conf: Path, tmp_path: Path) -> None:
    for flags, auto in (((), False), (("--auto-fix",), True)):
        with daemon(daemon_config(conf, "--mode", "conservative", *flags), tmp_path) as (svc, _served):
            assert svc.status()["auto_fix"] is auto
            assert svc.services()["eliminator"] == ("auto" if auto else "recommend")


def test_enable_all_turns_on_every_optional_part(conf: Path, tmp_path: Path) -> None:
    plain = daemon_config(conf, "--mode", "conservative")
    every = daemon_config(conf, "--mode", "conservative", "--enable-all")
    for section, values in ENABLE_ALL.items():
        for key, value in values.items():
            assert getattr(getattr(every, section), key) == value, (section, key)
    assert (plain.cache.enable_prefetch, plain.cache.compression, plain.eliminator.auto_fix,
            plain.eliminator.prediction_enabled) == (False, "none", False, False)
    with daemon(every, tmp_path) as (svc, served), agent_cache(served) as cache:
        assert svc.status()["auto_fix"] is True
        assert _predicted_per_access(cache) == served.cache.prefetch_depth
        assert _l3_stored_share(served) < 0.1
        assert svc.eliminator.settings.prediction_enabled is True


def test_mode_namespace_and_thresholds_follow_the_flags(conf: Path, tmp_path: Path) -> None:
    with throwaway_namespace("sw2") as other:
        config = daemon_config(conf, "--mode", "aggressive", "--namespace", other)
    with daemon(config, tmp_path) as (svc, served):
        assert svc.status()["mode"] == "aggressive" and served.cache.namespace == other
        assert svc.fleet_config()["namespace"] == other
        assert svc.profiler.thresholds.cpu_util_pct == 95.0


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sutazai_hwopt", *args], capture_output=True, text=True,
                          timeout=120, env=env or os.environ.copy())


def test_cli_only_flags_act(tmp_path: Path, daemon_ns: str) -> None:
    """--runtime-dir, --host, --port, --log-dir, --wait and --foreground, through the real CLI."""
    rt = tmp_path / "explicit-rt"
    logs = tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if k != "SUTAZAI_HWOPT_RUNTIME_DIR"}
    common = ["--runtime-dir", str(rt), "--namespace", daemon_ns, "--l2-size", str(MiB), "--pool-size", "1"]
    try:
        run = cli("deploy", *common, "--host", "127.0.0.1", "--port", "0", "--log-dir", str(logs), env=env)
        assert run.returncode == 0, run.stderr
        endpoint = RuntimeDir(rt).read_endpoint()
        assert endpoint is not None and endpoint["host"] == "127.0.0.1" and endpoint["port"] not in (0, 8731)
        assert f"namespace {daemon_ns} owned" in (logs / "hardware_optimization.log").read_text()
        assert cli("stop", "--runtime-dir", str(rt), "--purge", env=env).returncode == 0
        # --wait bounds how long deploy waits for the daemon to listen
        slow = cli("deploy", *common, "--wait", "0", env=env)
        assert slow.returncode == 1 and "did not start listening within 0 s" in slow.stderr
        _wait_for(lambda: RuntimeDir(rt).read_endpoint() is not None, "the daemon to listen after all")
        assert cli("stop", "--runtime-dir", str(rt), "--purge", env=env).returncode == 0
        # --foreground: the daemon is the deploy process itself
        fg = subprocess.Popen([sys.executable, "-m", "sutazai_hwopt", "deploy", *common, "--foreground"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(lambda: (RuntimeDir(rt).read_endpoint() or {}).get("pid") == fg.pid, "the foreground daemon")
        finally:
            assert cli("stop", "--runtime-dir", str(rt), "--purge", env=env).returncode == 0
            fg.wait(timeout=60)
        assert fg.returncode == 0
    finally:
        if RuntimeDir(rt).running() is not None:
            cli("stop", "--runtime-dir", str(rt), env=env)


def _wait_for(predicate: Any, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


#: Every deploy flag and the test that observes it (the next test fails when a flag is added without one).
FLAG_TESTS = {
    "--mode": test_mode_namespace_and_thresholds_follow_the_flags,
    "--namespace": test_mode_namespace_and_thresholds_follow_the_flags,
    "--config": test_l2_size_sizes_the_shared_tier_the_daemon_creates,
    "--l1-size": test_l1_size_reaches_every_agents_l1,
    "--l2-size": test_l2_size_sizes_the_shared_tier_the_daemon_creates,
    "--enable-ml": test_enable_ml_turns_prefetching_on,
    "--prefetch-depth": test_prefetch_depth_reaches_the_prefetcher,
    "--enable-compression": test_enable_compression_compresses_the_l3_tier,
    "--pool-size": test_pool_size_sizes_the_default_pools,
    "--auto-fix": test_auto_fix_lets_the_eliminator_act,
    "--enable-all": test_enable_all_turns_on_every_optional_part,
    "--runtime-dir": test_cli_only_flags_act,
    "--host": test_cli_only_flags_act,
    "--port": test_cli_only_flags_act,
    "--log-dir": test_cli_only_flags_act,
    "--wait": test_cli_only_flags_act,
    "--foreground": test_cli_only_flags_act,
}


def test_every_deploy_flag_has_a_test_and_a_line_in_the_docs() -> None:
    from sutazai_hwopt.host.commands import COMMANDS

    parser = argparse.ArgumentParser()
    _deploy_args = next(add for name, _h, add, _r in COMMANDS if name == "deploy")
    _deploy_args(parser)
    flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    assert flags == set(FLAG_TESTS), flags ^ set(FLAG_TESTS)
    doc = (ROOT / "docs" / "host.md").read_text()
    assert not [f for f in flags if f"`{f}" not in doc]


# -- configuration keys ---------------------------------------------------------------------------------------
def _found(config: HwoptConfig, metrics: dict[str, Any]) -> set[str]:
    profiler = PerformanceProfiler(agents={}, config=config)
    try:
        return {b.type for b in detect_bottlenecks(metrics, {}, profiler.thresholds)}
    finally:
        profiler.close()


def test_max_memory_usage_is_the_memory_pressure_threshold() -> None:
    used = {"memory": {"used_percent": 80.0}}
    assert "memory_pressure" in _found(load_config(overrides={"hardware": {"max_memory_usage": 75.0}}), used)
    assert "memory_pressure" not in _found(load_config(overrides={"hardware": {"max_memory_usage": 85.0}}), used)


def test_max_cpu_usage_is_the_cpu_saturation_threshold() -> None:
    # CPU pressure counts as saturation once utilisation reaches half of max_cpu_usage
    busy = {"cpu": {"utilization": 45.0, "count": 2}, "pressure": {"cpu": {"some": 30.0}}}
    assert "high_cpu_usage" in _found(load_config(overrides={"hardware": {"max_cpu_usage": 85.0}}), busy)
    assert "high_cpu_usage" not in _found(load_config(overrides={"hardware": {"max_cpu_usage": 100.0}}), busy)


def test_the_mode_sets_detection_sensitivity() -> None:
    """Conservative reacts to less stall time than balanced, aggressive tolerates more."""
    stalled = {"pressure": {"memory": {"some": 9.0}}}
    assert "memory_pressure" in _found(load_config(mode="conservative"), stalled)
    assert "memory_pressure" not in _found(load_config(mode="balanced"), stalled)
    assert "memory_pressure" in _found(load_config(mode="balanced"), {"pressure": {"memory": {"some": 12.0}}})
    assert "memory_pressure" not in _found(load_config(mode="aggressive"), {"pressure": {"memory": {"some": 12.0}}})


def test_cache_size_mb_bounds_the_shared_tiers(conf: Path, tmp_path: Path) -> None:
    config = daemon_config(conf, "--l2-size", str(3 * MiB))
    budget = dataclasses.replace(config, hardware=dataclasses.replace(config.hardware, cache_size_mb=4))
    with daemon(budget, tmp_path) as (svc, served):
        assert svc.fleet_config()["tiers"] == {"L2": {"size": 3 * MiB}, "L3": {"size": MiB}}
        assert (served.cache.l2_size, served.cache.l3_size) == (3 * MiB, MiB)     # what agents are told


def test_shared_memory_size_mb_sizes_the_default_pools(conf: Path, tmp_path: Path) -> None:
    with daemon(daemon_config(conf), tmp_path) as (svc, _served):
        assert {f["capacity"] for f in svc.fleet_config()["pools"].values()} == {MiB}


def test_prefetch_depth_is_one_setting_under_two_names(tmp_path: Path) -> None:
    """The reference config writes hardware.prefetch_depth; the cache section has its own: the later wins."""
    (tmp_path / "hardware_optimization.json").write_text(json.dumps({"prefetch_depth": 6}))
    assert load_config(tmp_path).cache.prefetch_depth == 6
    (tmp_path / "cache_system.json").write_text(json.dumps({"prefetch_depth": 2}))
    both = load_config(tmp_path)
    assert both.cache.prefetch_depth == both.hardware.prefetch_depth == 2      # the specific file wins
    flagged = load_config(tmp_path, overrides={"cache": {"prefetch_depth": 9}})
    assert flagged.cache.prefetch_depth == flagged.hardware.prefetch_depth == 9
    assert load_config(mode="aggressive").hardware.prefetch_depth == 5          # the mode's preset otherwise


def test_every_config_key_has_a_behaviour_test() -> None:
    """Each key of every section has a ``test_key__<section>__<key>`` test (anywhere under tests/) that sets it
    through a configuration and observes what it changes; a key nothing can observe is removed instead."""
    defined = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_key__\w+)\(", path.read_text(), re.M))
    missing = [f"{name}.{f.name}" for name, cls in SECTION_FILES.items() for f in dataclasses.fields(cls)
               if f"test_key__{name}__{f.name}" not in defined]
    assert not missing, f"config keys with no behaviour test: {missing}"
    stale = sorted(t for t in defined if t.split("__")[1] not in SECTION_FILES
                   or t.split("__")[2] not in {f.name for f in dataclasses.fields(SECTION_FILES[t.split("__")[1]])})
    assert not stale, f"behaviour tests of keys that no longer exist: {stale}"
