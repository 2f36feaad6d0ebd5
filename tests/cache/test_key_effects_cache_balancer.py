"""Every key of ``cache_system.json`` and ``load_balancer.json`` changes what its part does.

One ``test_key__<section>__<key>`` function per key (a guard finds them by name). Each writes the key into a JSON
file in a temporary configuration directory, resolves it with :func:`load_config` (the path a user's files take)
and builds the part from that configuration, then observes the key's effect on behaviour: what is evicted, what
another process would read, what is prefetched, which backend is chosen, when one is ejected. Each test compares
two values of its key, so it fails if the key stopped acting (or stopped being read from the file). Time comes from
a ``FakeClock`` wherever the part takes one, and the health-check period is observed on an event loop of virtual
time; only the health-check timeout runs against a real (0.3 s) slow answer.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import selectors
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sutazai_hwopt.balancer import BackendService, DynamicLoadBalancer
from sutazai_hwopt.balancer.types import RequestType
from sutazai_hwopt.cache.system import IntelligentCacheSystem
from sutazai_hwopt.config import BalancerSection, CacheSection, HwoptConfig, load_config
from sutazai_hwopt.errors import WeightError
from sutazai_hwopt.shm import list_segment_names
from sutazai_hwopt.testing import FakeClock, throwaway_namespace

KiB, MiB = 1 << 10, 1 << 20
_dirs = itertools.count()


def _load(tmp_path: Path, section: type[CacheSection] | type[BalancerSection], keys: dict[str, Any]) -> HwoptConfig:
    """The configuration of a fresh directory holding ``keys`` in ``section``'s file."""
    d = tmp_path / f"conf{next(_dirs)}"
    d.mkdir()
    (d / section.FILE).write_text(json.dumps(keys))
    return load_config(d)


@pytest.fixture
def ns() -> Iterator[str]:
    """A fresh namespace; every test must leave it without segments and without a prefetch thread."""
    with throwaway_namespace("keys") as name:
        yield name
        assert list_segment_names(name) == []
        assert not [t for t in threading.enumerate() if t.name == "sutazai-cache-prefetch"]


# ==== cache_system.json =========================================================================================
def _cache_config(tmp_path: Path, ns: str, **keys: Any) -> HwoptConfig:
    """A ``cache_system.json`` of small tiers (L2 only, no prefetch) plus ``keys``, resolved."""
    base = {"namespace": ns, "l1_size": 0, "l2_size": MiB, "l3_size": 0, "enable_prefetch": False}
    return _load(tmp_path, CacheSection, {**base, **keys})


@contextmanager
def _cache(tmp_path: Path, ns: str, loader: Callable[[Any], Any] | None = None,
           **keys: Any) -> Iterator[IntelligentCacheSystem]:
    """A cache system built from :func:`_cache_config`; its shared tiers are destroyed afterwards."""
    cache = IntelligentCacheSystem(_cache_config(tmp_path, ns, **keys), loader=loader)
    try:
        yield cache
    finally:
        cache.destroy()


def _present(cache: IntelligentCacheSystem, keys: list[str]) -> list[str]:
    return [k for k in keys if k in cache]


def test_key__cache__namespace(tmp_path: Path, ns: str) -> None:
    """Systems of one namespace share L2: a value put by one is read by another; another namespace sees none."""
    with _cache(tmp_path, ns) as writer:
        writer.put("shared", b"v" * 100)
        with IntelligentCacheSystem(_cache_config(tmp_path, ns)) as reader:
            value, level = reader.get("shared")
            assert level == "L2" and bytes(value) == b"v" * 100
            del value
        with throwaway_namespace("keys-other") as other, _cache(tmp_path, other) as stranger:
            assert stranger.get("shared") == (None, None)
            assert list_segment_names(other) and list_segment_names(ns)   # one segment set per namespace


def test_key__cache__l1_size(tmp_path: Path, ns: str) -> None:
    """L1 holds at most l1_size bytes of values: the fifth 1000-byte value evicts in a 4000-byte L1, not in a
    5000-byte one; a value larger than L1 is refused when no shared level can take it."""
    keys = [f"k{i}" for i in range(5)]
    for size, kept in ((4000, 4), (5000, 5)):
        with _cache(tmp_path, ns, l1_size=size, l2_size=0, policy="lru") as cache:
            for k in keys:
                cache.put(k, bytes(1000 - 64))                             # weighs 1000 (value_size)
            assert len(_present(cache, keys)) == kept
            assert cache.stats()["levels"]["L1"]["bytes"] <= size
            with pytest.raises(WeightError):
                cache.put("big", bytes(size))


def test_key__cache__l2_size(tmp_path: Path, ns: str) -> None:
    """64 values of 32 KiB overflow a 1 MiB L2 (the oldest are evicted) and all fit in a 4 MiB one."""
    keys = [f"v{i}" for i in range(64)]
    for size, all_kept in ((MiB, False), (4 * MiB, True)):
        with _cache(tmp_path, ns, l2_size=size) as cache:
            for k in keys:
                cache.put(k, bytes(32 * KiB))
            assert (_present(cache, keys) == keys) is all_kept
            assert cache.get("v0")[1] == ("L2" if all_kept else None)


def test_key__cache__l3_size(tmp_path: Path, ns: str) -> None:
    """L2's victims go to L3 when l3_size > 0 (and are read back from there); with 0 they are dropped."""
    keys = [f"v{i}" for i in range(64)]
    for size, level in ((0, None), (4 * MiB, "L3")):
        with _cache(tmp_path, ns, l2_size=MiB, l3_size=size) as cache:
            for k in keys:
                cache.put(k, bytes(32 * KiB))
            assert cache.get("v0")[1] == level


def test_key__cache__policy(tmp_path: Path, ns: str) -> None:
    """L1's victim follows the policy: LRU drops the key used most but longest ago, LFU keeps it."""
    for policy, a_kept in (("lru", False), ("lfu", True)):
        with _cache(tmp_path, ns, l1_size=4000, l2_size=0, policy=policy) as cache:
            for k in "abcd":
                cache.put(k, bytes(1000 - 64))
            for k in "aaabcd":
                assert cache.get(k)[1] == "L1"
            cache.put("e", bytes(1000 - 64))
            assert ("a" in cache) is a_kept


# -- prefetching -------------------------------------------------------------------------------------------------
def _prefetched(cache: IntelligentCacheSystem, train: list[str], probe: list[str], reps: int = 6) -> set[str]:
    """Keys the prefetcher loads on its own: learn ``train`` ``reps`` times, empty the cache, then read ``probe``
    (misses, which store nothing) and return every key of the two lists that is cached afterwards."""
    for _ in range(reps):
        for k in train:
            cache.get_or_load(k, "ag", lambda k: str(k).encode())
    cache.drain_prefetch()
    cache.clear()
    for k in probe:
        cache.get(k, "ag")
    cache.drain_prefetch()
    return set(_present(cache, sorted(set(train) | set(probe))))


_PF = {"enable_prefetch": True, "prefetch_inline": True, "prefetch_mode": "always", "prefetch_depth": 1}
_CHAIN = ["a", "b", "c", "d"]
_FORK = ["a", "x", "b", "c", "x", "d"]      # after x: b or d, told apart only by the key before x


def _loader(key: Any) -> bytes:
    return str(key).encode()


def test_key__cache__enable_prefetch(tmp_path: Path, ns: str) -> None:
    """On, a learnt chain's next key is loaded before it is asked for; off, nothing is."""
    for on, expected in ((False, set()), (True, {"b"})):
        with _cache(tmp_path, ns, _loader, **{**_PF, "enable_prefetch": on}) as cache:
            assert _prefetched(cache, _CHAIN, ["a"]) == expected
            assert ("prefetch" in cache.stats()) is on


def test_key__cache__prefetch_depth(tmp_path: Path, ns: str) -> None:
    """One access prefetches up to prefetch_depth keys of the learnt chain."""
    for depth, expected in ((1, {"b"}), (3, {"b", "c", "d"})):
        with _cache(tmp_path, ns, _loader, **{**_PF, "prefetch_depth": depth}) as cache:
            assert _prefetched(cache, _CHAIN, ["a"]) == expected


def test_key__cache__prefetch_order(tmp_path: Path, ns: str) -> None:
    """An order-2 model tells "a x -> b" from "c x -> d"; an order-1 model sees only "x" and guesses d (the
    more recent successor)."""
    for order, expected in ((2, "b"), (1, "d")):
        with _cache(tmp_path, ns, _loader, **{**_PF, "prefetch_order": order}) as cache:
            assert _prefetched(cache, _FORK, ["a", "x"]) == {"x", expected}


def test_key__cache__prefetch_min_confidence(tmp_path: Path, ns: str) -> None:
    """After x the order-1 model gives b and d about 45% each: a 0.3 bar prefetches both, a 0.6 bar neither."""
    for bar, expected in ((0.3, {"x", "b", "d"}), (0.6, {"x"})):
        with _cache(tmp_path, ns, _loader, **{**_PF, "prefetch_order": 1, "prefetch_depth": 2,
                                              "prefetch_min_confidence": bar}) as cache:
            assert _prefetched(cache, _FORK, ["a", "x"]) == expected


def test_key__cache__prefetch_queue(tmp_path: Path, ns: str) -> None:
    """With the worker stuck in a loader, accesses beyond prefetch_queue waiting batches are dropped."""
    for queue_size, dropping in ((1, True), (64, False)):
        gate = threading.Event()

        def stuck(key: Any, gate: threading.Event = gate) -> bytes:
            gate.wait(30)
            return b"x"

        keys = {**_PF, "prefetch_inline": False, "prefetch_batch": 1, "prefetch_queue": queue_size}
        with _cache(tmp_path, ns, stuck, **keys) as cache:
            try:
                for _ in range(10):
                    for k in "abc":
                        cache.get(k, "ag")
                assert (cache.stats()["prefetch"]["dropped"] > 0) is dropping
            finally:
                gate.set()


def test_key__cache__prefetch_inline(tmp_path: Path, ns: str) -> None:
    """Inline, get() itself prefetches (no thread); otherwise a worker thread does it."""
    for inline in (True, False):
        with _cache(tmp_path, ns, _loader, **{**_PF, "prefetch_inline": inline, "prefetch_batch": 1}) as cache:
            for _ in range(4):
                for k in _CHAIN:
                    cache.get(k, "ag")
            threads = [t for t in threading.enumerate() if t.name == "sutazai-cache-prefetch"]
            assert bool(threads) is not inline
            cache.drain_prefetch()
            cache.clear()
            cache.get("a", "ag")
            if inline:
                assert "b" in cache                                        # loaded before get() returned
            cache.drain_prefetch()
            assert "b" in cache


def test_key__cache__prefetch_mode(tmp_path: Path, ns: str) -> None:
    """'always' feeds the model from the first access; 'auto' only watches until a pattern has paid."""
    for mode, fed in (("auto", False), ("always", True)):
        with _cache(tmp_path, ns, _loader, **{**_PF, "prefetch_mode": mode}) as cache:
            assert (_prefetched(cache, _CHAIN, ["a"]) == {"b"}) is fed
            pf = cache.stats()["prefetch"]
            assert (pf["state"], pf["model_accesses"] > 0) == (("on", True) if fed else ("off", False))


def test_key__cache__prefetch_batch(tmp_path: Path, ns: str) -> None:
    """Accesses reach the model prefetch_batch at a time."""
    for batch in (1, 5):
        with _cache(tmp_path, ns, _loader, **{**_PF, "prefetch_inline": False, "prefetch_batch": batch}) as cache:
            seen = []
            for i in range(5):
                cache.get(f"k{i}", "ag")
                seen.append(cache.stats()["prefetch"]["model_accesses"])
            assert seen == ([1, 2, 3, 4, 5] if batch == 1 else [0, 0, 0, 0, 5])


_VALUE = bytes(32 * KiB)   # 72 workflow keys of 32 KiB overflow the 1 MiB L2: they miss unless prefetched


def _governed(cache: IntelligentCacheSystem) -> dict[str, Any]:
    """Run 2,000 random accesses, then 5,000 of four agents repeating twelve fixed chains; the governor's
    figures. The workflow's repeats show in the sketch and on misses, so auto mode tries the model."""
    rng = random.Random(7)
    chains = [[f"wf{t}:step{j}" for j in range(6)] for t in range(12)]
    queues: dict[str, list[str]] = {f"agent{i}": [] for i in range(4)}
    for n in range(7000):
        if n < 2000:
            agent, key = f"agent{rng.randrange(4)}", f"r{rng.randrange(100_000)}"
        else:
            agent = rng.choice(list(queues))
            if not queues[agent]:
                queues[agent] = list(rng.choice(chains))
            key = queues[agent].pop(0)
        if cache.get(key, agent)[1] is None:
            cache.put(key, _VALUE, agent)
    return dict(cache.stats()["prefetch"])


def _auto(**keys: Any) -> dict[str, Any]:
    return {"enable_prefetch": True, "prefetch_inline": True, "prefetch_mode": "auto", **keys}


def test_key__cache__prefetch_min_precision(tmp_path: Path, ns: str) -> None:
    """A precision bar of 1 ends the workflow's trial off (naming precision); a bar of 0 lets the model stay."""
    for bar in (1.0, 0.0):
        with _cache(tmp_path, ns, lambda k: _VALUE, **_auto(prefetch_min_precision=bar)) as cache:
            pf = _governed(cache)
        states = [s["state"] for s in pf["switches"]]
        assert states[0] == "trial"
        if bar:
            assert states[1] == "off" and "precision" in pf["switches"][1]["reason"]
        else:
            assert "off" not in states and pf["state"] == "on"


def test_key__cache__prefetch_min_coverage(tmp_path: Path, ns: str) -> None:
    """A coverage bar of 1 is never met by the workflow's predictable misses, so the model is never tried; at 0
    it is."""
    for bar, tried in ((1.0, False), (0.0, True)):
        with _cache(tmp_path, ns, lambda k: _VALUE, **_auto(prefetch_min_coverage=bar)) as cache:
            pf = _governed(cache)
        assert (pf["model_accesses"] > 0) is tried
        assert bool(pf["switches"]) is tried


def test_key__cache__compression(tmp_path: Path, ns: str) -> None:
    """Zero-filled values demoted to L3 are stored nearly raw with 'none' and shrink with lz4 and zlib."""
    for codec, small in (("none", False), ("lz4", True), ("zlib", True)):
        with _cache(tmp_path, ns, l2_size=MiB, l3_size=4 * MiB, compression=codec) as cache:
            for i in range(64):
                cache.put(f"v{i}", bytes(32 * KiB))
            l3 = cache.stats()["levels"]["L3"]
            assert l3["raw_bytes_in"] > 0
            assert (l3["stored_bytes_in"] < 0.1 * l3["raw_bytes_in"]) is small


def test_key__cache__l3_directory(tmp_path: Path, ns: str) -> None:
    """With l3_directory, L3 survives its segment: a new system reads a demoted value back from the files."""
    for directory in (None, str(tmp_path / "l3dir")):
        keys: dict[str, Any] = {"l2_size": MiB, "l3_size": 4 * MiB, "l3_directory": directory}
        with _cache(tmp_path, ns, **keys) as cache:
            for i in range(64):
                cache.put(f"v{i}", bytes(32 * KiB))
            assert cache.get("v0")[1] == "L3"
        assert list_segment_names(ns) == []                                # the "restart": segments are gone
        with _cache(tmp_path, ns, **keys) as cache:
            assert cache.get("v0")[1] == ("L3" if directory else None)
        if directory:
            assert any(Path(directory).glob("*.l3"))
            shutil.rmtree(directory)


def _die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGTERM): the server goes away even if the test process is killed."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this module on a free loopback port (skips when it is not installed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    redis = pytest.importorskip("redis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly",
                             "no", "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(1000):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                threading.Event().wait(0.01)
        else:
            pytest.fail("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


_HMAC = "k" * 32


def test_key__cache__redis_url(tmp_path: Path, ns: str, redis_url: str) -> None:
    """With redis_url, a value survives its host's shared tiers (read back from the server); without, it is gone."""
    for url, level in ((None, None), (redis_url, "remote")):
        keys: dict[str, Any] = {"redis_url": url, "redis_hmac_key": _HMAC}
        with _cache(tmp_path, ns, **keys) as cache:
            cache.put("remote-key", b"value")
        with _cache(tmp_path, ns, **keys) as cache:                        # fresh segments: another "host"
            value, found = cache.get("remote-key")
            assert found == level
            if level:
                assert bytes(value) == b"value"
                cache.clear()


def test_key__cache__redis_hmac_key(tmp_path: Path, ns: str, redis_url: str) -> None:
    """A value signed with one redis_hmac_key is read by a host with the same key and refused by another."""
    with _cache(tmp_path, ns, redis_url=redis_url, redis_hmac_key=_HMAC) as cache:
        cache.put("signed", b"value")
    for key, level in (("z" * 32, None), (_HMAC, "remote")):
        with _cache(tmp_path, ns, redis_url=redis_url, redis_hmac_key=key) as cache:
            assert cache.get("signed")[1] == level
            assert cache.stats()["levels"]["remote"]["rejected"] == (0 if level else 1)
            if level:
                cache.clear()


def test_key__cache__l2_max_entries(tmp_path: Path, ns: str) -> None:
    """L2 holds at most l2_max_entries entries, however much room its bytes have left."""
    keys = [f"s{i}" for i in range(100)]
    for entries in (48, 200):
        with _cache(tmp_path, ns, l2_max_entries=entries) as cache:
            for k in keys:
                cache.put(k, b"small")
            assert len(_present(cache, keys)) == min(entries, 100)


def test_key__cache__l3_max_entries(tmp_path: Path, ns: str) -> None:
    """L3 holds at most l3_max_entries of L2's victims."""
    keys = [f"s{i}" for i in range(200)]
    for entries, kept in ((48, 48 + 48), (400, 200)):
        with _cache(tmp_path, ns, l2_max_entries=48, l3_size=MiB, l3_max_entries=entries) as cache:
            for k in keys:
                cache.put(k, b"small")
            assert len(_present(cache, keys)) == kept                      # L2's 48 plus what L3 keeps


# ==== load_balancer.json ========================================================================================
def _lb(tmp_path: Path, n: int = 3, clock: Callable[[], float] | None = None, weights: tuple[float, ...] = (),
        **keys: Any) -> DynamicLoadBalancer:
    """A balancer built from a ``load_balancer.json`` of ``keys`` (round robin unless given), with ``n``
    backends b0.. (fake time by default)."""
    cfg = _load(tmp_path, BalancerSection, {"algorithm": "round_robin", **keys})
    lb = DynamicLoadBalancer(cfg, clock=clock or FakeClock())
    for i in range(n):
        lb.register_service(BackendService(service_id=f"b{i}", port=8000 + i,
                                           weight=weights[i] if weights else 1.0))
    return lb


def _outcomes(lb: DynamicLoadBalancer, sid: str, results: str) -> None:
    """Route until ``sid`` answered once per letter of ``results`` (F: failed, S: succeeded); others succeed."""
    for r in results:
        while True:
            s = lb.select_backend_sync()
            if s.service_id == sid:
                lb.record_result(sid, 0.001, r == "S")
                break
            lb.record_result(s.service_id, 0.001, True)


def test_key__balancer__algorithm(tmp_path: Path) -> None:
    """weighted_round_robin sends a 3:1 weighted pair 3:1; round_robin sends it 1:1."""
    for algorithm, share in (("round_robin", 4), ("weighted_round_robin", 6)):
        lb = _lb(tmp_path, 2, weights=(3.0, 1.0), algorithm=algorithm)
        picks = []
        for _ in range(8):
            s = lb.select_backend_sync()
            lb.record_result(s.service_id, 0.001, True)
            picks.append(s.service_id)
        assert picks.count("b0") == share


def test_key__balancer__consecutive_failures(tmp_path: Path) -> None:
    """The k-th failure in a row ejects the backend, not the one before."""
    lb = _lb(tmp_path, consecutive_failures=3, max_ejection_percent=100.0)
    _outcomes(lb, "b1", "FF")
    assert lb.state_of("b1") == "healthy"
    _outcomes(lb, "b1", "F")
    assert lb.state_of("b1") == "ejected"


def test_key__balancer__failure_rate_threshold(tmp_path: Path) -> None:
    """Alternating outcomes (rate 0.5) eject at a 0.5 threshold and not at 0.6."""
    for threshold, state in ((0.5, "ejected"), (0.6, "healthy")):
        lb = _lb(tmp_path, consecutive_failures=100, failure_window=10, failure_min_requests=10,
                 failure_rate_threshold=threshold, max_ejection_percent=100.0)
        _outcomes(lb, "b1", "SF" * 5)
        assert lb.state_of("b1") == state


def test_key__balancer__failure_window(tmp_path: Path) -> None:
    """Two late failures after six successes are half of a 4-outcome window, a quarter of a 32-outcome one."""
    for window, state in ((4, "ejected"), (32, "healthy")):
        lb = _lb(tmp_path, consecutive_failures=100, failure_window=window, failure_min_requests=4,
                 failure_rate_threshold=0.5, max_ejection_percent=100.0)
        _outcomes(lb, "b1", "SSSSSSFSF")
        assert lb.state_of("b1") == state


def test_key__balancer__failure_min_requests(tmp_path: Path) -> None:
    """One failure in two outcomes is a 50% rate: it ejects once 2 outcomes count, not while 10 are needed."""
    for minimum, state in ((2, "ejected"), (10, "healthy")):
        lb = _lb(tmp_path, consecutive_failures=100, failure_min_requests=minimum, failure_rate_threshold=0.5,
                 max_ejection_percent=100.0)
        _outcomes(lb, "b1", "SF")
        assert lb.state_of("b1") == state


def _ejected_for(lb: DynamicLoadBalancer, clock: FakeClock, sid: str) -> float:
    """Seconds (in 0.25 s steps) until the ejected ``sid`` is probed again."""
    t0 = clock()
    while lb.state_of(sid) == "ejected":
        clock.advance(0.25)
    return clock() - t0


def test_key__balancer__base_ejection_s(tmp_path: Path) -> None:
    """The first ejection lasts base_ejection_s."""
    for base in (1.0, 2.5):
        clock = FakeClock()
        lb = _lb(tmp_path, clock=clock, consecutive_failures=1, base_ejection_s=base, max_ejection_percent=100.0)
        _outcomes(lb, "b1", "F")
        assert _ejected_for(lb, clock, "b1") == base


def test_key__balancer__max_ejection_s(tmp_path: Path) -> None:
    """The doubling ejections (1 s, 2 s, 4 s) stop growing at max_ejection_s."""
    for cap, lengths in ((30.0, [1.0, 2.0, 4.0]), (1.5, [1.0, 1.5, 1.5])):
        clock = FakeClock()
        lb = _lb(tmp_path, clock=clock, consecutive_failures=1, base_ejection_s=1.0, max_ejection_s=cap,
                 max_ejection_percent=100.0)
        seen = []
        for _ in range(3):
            _outcomes(lb, "b1", "F")                                       # a failed probe re-ejects
            seen.append(_ejected_for(lb, clock, "b1"))
        assert seen == lengths


def test_key__balancer__max_ejection_percent(tmp_path: Path) -> None:
    """Ejecting one of two backends takes 50% out: allowed at a 50% panic threshold, refused at 40%."""
    for percent, state in ((50.0, "ejected"), (40.0, "healthy")):
        lb = _lb(tmp_path, 2, consecutive_failures=1, max_ejection_percent=percent)
        _outcomes(lb, "b1", "F")
        assert lb.state_of("b1") == state


def test_key__balancer__half_open_probes(tmp_path: Path) -> None:
    """After its ejection a backend is sent exactly half_open_probes requests until one answers."""
    for probes in (1, 3):
        clock = FakeClock()
        lb = _lb(tmp_path, clock=clock, consecutive_failures=1, half_open_probes=probes)
        _outcomes(lb, "b0", "F")
        clock.advance(1.0)
        held = [lb.select_backend_sync().service_id for _ in range(20)]
        assert held.count("b0") == probes


def test_key__balancer__session_affinity(tmp_path: Path) -> None:
    """With affinity one session's requests stay on one backend; without, round robin spreads them."""
    for affinity, distinct in ((True, 1), (False, 3)):
        lb = _lb(tmp_path, session_affinity=affinity)
        picks = set()
        for _ in range(6):
            s = lb.select_backend_sync(RequestType.DEFAULT, "session-1")
            lb.record_result(s.service_id, 0.001, True)
            picks.add(s.service_id)
        assert len(picks) == distinct


def _ewma_choice(lb: DynamicLoadBalancer, clock: FakeClock, b0: tuple[float, bool], b1: tuple[float, bool],
                 earlier_b0: float | None = None) -> str:
    """Feed b0 and b1 one (latency, success) each (b0 first a slow answer ``earlier_b0`` one second before),
    then let peak-EWMA P2C choose between the two."""
    if earlier_b0 is not None:
        assert lb.select_backend_sync().service_id == "b0"
        lb.record_result("b0", earlier_b0, True)
        assert lb.select_backend_sync().service_id == "b1"
        lb.release("b1")
        clock.advance(1.0)
    for sid, (latency, ok) in (("b0", b0), ("b1", b1)):
        assert lb.select_backend_sync().service_id == sid
        lb.record_result(sid, latency, ok)
    lb.set_algorithm(RequestType.DEFAULT, "p2c_ewma")
    return lb.select_backend_sync().service_id


def test_key__balancer__ewma_tau_s(tmp_path: Path) -> None:
    """b0 answered slowly (1 s) a second ago, then fast (10 ms); b1 in 50 ms. With a 0.1 s decay time the old
    answer is forgotten and b0 is the faster; with 100 s it still weighs and b1 is chosen."""
    for tau, chosen in ((0.1, "b0"), (100.0, "b1")):
        clock = FakeClock()
        lb = _lb(tmp_path, 2, clock=clock, ewma_tau_s=tau)
        assert _ewma_choice(lb, clock, (0.01, True), (0.05, True), earlier_b0=1.0) == chosen


def test_key__balancer__failure_penalty_s(tmp_path: Path) -> None:
    """b0 failed in 1 ms, b1 answered in 50 ms: a failure counted as 1 s makes b1 the choice; as 0 s, b0."""
    for penalty, chosen in ((1.0, "b1"), (0.0, "b0")):
        clock = FakeClock()
        lb = _lb(tmp_path, 2, clock=clock, failure_penalty_s=penalty, consecutive_failures=10)
        assert _ewma_choice(lb, clock, (0.001, False), (0.05, True)) == chosen


def test_key__balancer__healthy_threshold(tmp_path: Path) -> None:
    """A backend taken out by active checks comes back after healthy_threshold passes in a row."""
    for passes in (1, 3):
        lb = _lb(tmp_path, unhealthy_threshold=1, healthy_threshold=passes)
        lb.report_health("b0", False)
        states = []
        for _ in range(3):
            lb.report_health("b0", True)
            states.append(lb.state_of("b0"))
        assert states.index("healthy") == passes - 1


def test_key__balancer__unhealthy_threshold(tmp_path: Path) -> None:
    """unhealthy_threshold failed checks in a row take a backend out (it gets no request)."""
    for fails in (1, 3):
        lb = _lb(tmp_path, unhealthy_threshold=fails)
        states = []
        for _ in range(3):
            lb.report_health("b0", False)
            states.append(lb.state_of("b0"))
        assert states.index("unhealthy") == fails - 1
        assert "b0" not in {lb.select_backend_sync().service_id for _ in range(6)}


class _JumpingSelector(selectors.DefaultSelector):
    """A selector whose clock jumps to the next timer whenever no I/O is ready (after a 2 ms real look)."""

    now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            return list(super().select(timeout))
        events = list(super().select(min(timeout, 0.002)))
        if not events:
            self.now += timeout
        return events


class _VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: a minute of periodic health checks runs in milliseconds."""

    def __init__(self) -> None:
        self._jumps = _JumpingSelector()
        super().__init__(self._jumps)

    def time(self) -> float:
        return self._jumps.now


def test_key__balancer__health_check_interval_s(tmp_path: Path) -> None:
    """A backend refusing connections is checked every health_check_interval_s: within 30 s, three failed checks
    (unhealthy_threshold) take it out when checked every 4 s, and not when checked every 20 s (two checks)."""

    async def run(interval: float) -> str:
        lb = DynamicLoadBalancer(_load(tmp_path, BalancerSection, {"health_check_interval_s": interval,
                                                                   "unhealthy_threshold": 3}))
        with socket.socket() as closed:                                     # bound, not listening: refuses
            closed.bind(("127.0.0.1", 0))
            lb.register_service(BackendService(service_id="b0", port=closed.getsockname()[1]))
            await lb.start()
            try:
                await asyncio.sleep(30.0)                                   # virtual seconds
                return lb.state_of("b0")
            finally:
                await lb.stop()

    for interval, state in ((4.0, "unhealthy"), (20.0, "healthy")):
        loop = _VirtualTimeLoop()
        try:
            assert loop.run_until_complete(run(interval)) == state
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def test_key__balancer__health_check_timeout_s(tmp_path: Path) -> None:
    """A health endpoint answering after 0.3 s fails a 0.05 s check timeout and passes a 30 s one."""

    async def run(timeout: float) -> str:
        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            await asyncio.sleep(0.3)
            writer.write(b"HTTP/1.0 200 OK\r\n\r\n")
            try:
                await writer.drain()
            except ConnectionError:
                pass
            writer.close()

        server = await asyncio.start_server(slow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        lb = DynamicLoadBalancer(_load(tmp_path, BalancerSection, {"health_check_timeout_s": timeout,
                                                                   "unhealthy_threshold": 1}))
        lb.register_service(BackendService(service_id="b0", port=port, health_path="/health"))
        try:
            await lb.check_now()
            await asyncio.sleep(0.4)                                        # let the slow handler finish
            return lb.state_of("b0")
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(run(0.05)) == "unhealthy"
    assert asyncio.run(run(30.0)) == "healthy"


def test_key__balancer__namespace(tmp_path: Path) -> None:
    """Balancers configured with one namespace share ejections; one with none keeps its own view."""
    with throwaway_namespace("keys-lb") as ns:
        ejector = _lb(tmp_path, 4, clock=FakeClock(), namespace=ns, consecutive_failures=1, base_ejection_s=600.0)
        peer = _lb(tmp_path, 4, clock=FakeClock(), namespace=ns)
        private = _lb(tmp_path, 4, clock=FakeClock())
        try:
            _outcomes(ejector, "b1", "F")
            assert ejector.state_of("b1") == "ejected"
            assert "b1" not in {peer.select_backend_sync().service_id for _ in range(8)}
            assert "b1" in {private.select_backend_sync().service_id for _ in range(8)}
        finally:
            ejector.close()
            peer.close()
        assert list_segment_names(ns)                                       # the namespace's table
