"""Prefetching: the Markov model learns chains and stays quiet on random streams; the governor turns the model on
for a repeating workflow and off again for a random stream; the worker never blocks or raises in the caller."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sutazai_hwopt.cache.prefetch import MarkovPredictor, PrefetchGovernor, PrefetchWorker
from sutazai_hwopt.cache.system import IntelligentCacheSystem
from sutazai_hwopt.config import CacheSection
from sutazai_hwopt.errors import ConfigError


def test_learns_a_chain_and_follows_it_to_depth() -> None:
    """After a few repetitions of a chain the next keys are predicted in order."""
    m = MarkovPredictor(order=2)
    for _ in range(4):
        for k in ["plan", "search", "embed", "rank", "answer"]:
            m.observe("a", k)
    m.observe("a", "plan")
    assert m.predict("a", 3) == ["search", "embed", "rank"]


def test_quiet_on_a_random_stream() -> None:
    """On i.i.d. keys the escape estimate keeps almost every prediction below the confidence bar."""
    rng = random.Random(3)
    m = MarkovPredictor(order=2)
    predicted = 0
    for _ in range(20000):
        m.observe("a", rng.randrange(2000))
        predicted += len(m.predict("a", 3))
    assert predicted < 100


def test_other_agents_teach_a_new_agent() -> None:
    """An agent with no history of a context uses the table shared by all agents."""
    m = MarkovPredictor(order=1)
    for _ in range(5):
        m.observe("old", "x")
        m.observe("old", "y")
    m.observe("new", "x")
    assert m.predict("new", 1) == ["y"]


def test_decay_follows_a_changed_workflow() -> None:
    """When a step's successor changes, the new successor wins after a few observations."""
    m = MarkovPredictor(order=1, decay=0.5)
    for _ in range(20):
        m.observe("a", "s")
        m.observe("a", "old")
    for _ in range(4):
        m.observe("a", "s")
        m.observe("a", "new")
    m.observe("a", "s")
    assert m.predict("a", 1) == ["new"]


def test_contexts_are_bounded() -> None:
    """The number of contexts never exceeds max_contexts."""
    m = MarkovPredictor(order=2, max_contexts=100)
    for i in range(5000):
        m.observe(f"a{i % 3}", i)
    assert len(m._tables) <= 100


def test_seed_warms_the_shared_table() -> None:
    """Seeded successors are predicted by an agent that has seen only the first key."""
    m = MarkovPredictor(order=2)
    m.seed([("plan", "search", 3.0)])
    m.observe("a", "plan")
    assert m.predict("a", 1) == ["search"]


def test_worker_full_backlog_drops_without_blocking_or_raising() -> None:
    """With the thread stuck, submissions beyond the backlog are dropped and counted, never blocking or raising;
    the thread stops on close."""
    gate = threading.Event()
    seen: list[object] = []

    def run(batch: list[tuple[str, object]], latest: bool) -> None:
        gate.wait(10)
        seen.extend(k for _, k in batch)

    w = PrefetchWorker(run, queue_size=2)
    for i in range(10):
        w.submit([("a", i), ("a", -i)])   # returns at once although the worker is blocked
    assert w.dropped >= 12 and w.sent - w.done <= 2
    gate.set()
    w.drain()
    assert seen and len(seen) <= 6
    w.close()
    assert not [t for t in threading.enumerate() if t.name == "sutazai-cache-prefetch"]


def test_worker_failures_stay_inside() -> None:
    """A batch that raises is a missed opportunity: submit returns normally, inline and threaded."""
    def boom(batch: list[tuple[str, object]], latest: bool) -> None:
        raise RuntimeError("loader down")

    for inline in (True, False):
        w = PrefetchWorker(boom, inline=inline)
        w.submit([("a", 1)])
        w.drain()
        assert w.ran == 1
        w.close()


VALUE = bytes(32 << 10)   # 72 workflow keys of 32 KiB do not fit the 1 MiB tier: they miss unless prefetched


def _workflow(n: int, rng: random.Random) -> Iterator[tuple[str, str]]:
    """Four agents interleaved, each repeating one of twelve fixed tool-call chains (72 keys)."""
    chains = [[f"wf{t}:step{j}" for j in range(6)] for t in range(12)]
    queues: dict[str, list[str]] = {f"agent{i}": [] for i in range(4)}
    for _ in range(n):
        a = rng.choice(list(queues))
        if not queues[a]:
            queues[a] = list(rng.choice(chains))
        yield a, queues[a].pop(0)


def _random(n: int, rng: random.Random, prefix: str) -> Iterator[tuple[str, str]]:
    for _ in range(n):
        yield f"agent{rng.randrange(4)}", f"{prefix}{rng.randrange(100_000)}"


def _states(cache: IntelligentCacheSystem, stream: Iterator[tuple[str, str]]) -> list[str]:
    out = []
    for agent, key in stream:
        if cache.get(key, agent)[1] is None:
            cache.put(key, VALUE, agent)
        out.append(cache.stats()["prefetch"]["state"] if len(out) % 250 == 0 else out[-1])
    return out


def test_governor_turns_on_for_a_workflow_and_off_for_random(ns: str) -> None:
    """random -> workflow -> random: off during random, on within 5,000 requests of the workflow, off within
    5,000 of it ending; stats() gives the state, the reason and the measurements behind it."""
    rng = random.Random(5)
    cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 1 << 20, "l3_size": 0,
                                    "prefetch_inline": True}, loader=lambda k: VALUE)
    try:
        _switching(cache, rng)
    finally:
        cache.destroy()


def _switching(cache: IntelligentCacheSystem, rng: random.Random) -> None:
    pf = cache.stats()["prefetch"]
    assert pf["mode"] == "auto" and pf["state"] == "off" and pf["reason"]
    first = _states(cache, _random(8000, rng, "r"))
    assert set(first) == {"off"}
    pf = cache.stats()["prefetch"]
    assert pf["model_accesses"] == 0 and pf["sampled"] > 0 and pf["next_trial_at"] is not None
    # The L2 tier holds only part of the random keys, so the workflow's keys keep missing until prefetched.
    second = _states(cache, _workflow(8000, rng))
    assert "on" in second[:5000]
    pf = cache.stats()["prefetch"]
    assert pf["state"] == "on" and pf["precision"] >= 0.4 and pf["coverage"] >= 0.05 and pf["used"] > 0
    assert pf["model_accesses"] > 0 and "pays" in pf["reason"]
    third = _states(cache, _random(8000, rng, "s"))
    assert "off" in third[:5000] and third[-1] == "off"
    pf = cache.stats()["prefetch"]
    assert "does not pay" in pf["reason"] and pf["next_trial_at"] > pf["requests"] - 5000
    states = [s["state"] for s in pf["switches"]]
    assert states[:3] == ["trial", "on", "off"]
    layers = cache.stats()["layers"]
    assert layers["prefetch"]["saves"]["misses_avoided"] == pf["used"] and layers["prefetch"]["on"] is False


def test_forced_mode_never_backs_off(ns: str) -> None:
    """prefetch_mode='always' feeds the model on every access, pay or not."""
    rng = random.Random(6)
    cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 1 << 20, "l3_size": 0,
                                    "prefetch_inline": True, "prefetch_mode": "always"})
    states = _states(cache, _random(3000, rng, "r"))
    assert set(states) == {"on"} and cache.stats()["prefetch"]["model_accesses"] == 3000
    cache.destroy()


def test_full_queue_never_blocks_or_raises_in_the_caller(ns: str) -> None:
    """With the worker stuck in a slow loader, get() keeps returning; dropped accesses are counted."""
    gate = threading.Event()

    def slow_loader(key: Any) -> bytes:
        gate.wait(10)
        return b"x"

    cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 1 << 20, "l3_size": 0,
                                    "prefetch_mode": "always", "prefetch_queue": 1, "prefetch_batch": 2,
                                    "prefetch_depth": 1}, loader=slow_loader)
    try:
        for _ in range(30):
            for k in ("a", "b", "c"):
                assert cache.get(k, "ag") == (None, None)
        assert cache.stats()["prefetch"]["dropped"] > 0
    finally:
        gate.set()
        cache.destroy()


def test_batch_size_is_the_hand_over_unit(ns: str) -> None:
    """prefetch_batch accesses reach the worker at once: fewer never leave the caller's list."""
    cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 1 << 20, "l3_size": 0,
                                    "prefetch_mode": "always", "prefetch_batch": 5})
    for i in range(4):
        cache.get(f"k{i}", "ag")
    assert cache.stats()["prefetch"]["model_accesses"] == 0
    cache.get("k4", "ag")
    cache.drain_prefetch()
    assert cache.stats()["prefetch"]["model_accesses"] == 5
    cache.destroy()


def test_thresholds_decide(ns: str) -> None:
    """A precision bar above any precision ends the workflow's trial off, naming precision; a coverage bar of 1
    is never reached by the sketch's predictable misses, so the model is never even tried."""
    for key, word in (("prefetch_min_precision", "precision"), ("prefetch_min_coverage", None)):
        rng = random.Random(7)
        cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 1 << 20, "l3_size": 0,
                                        "prefetch_inline": True, key: 1.0}, loader=lambda k: VALUE)
        try:
            _states(cache, _random(2000, rng, "r"))
            _states(cache, _workflow(5000, rng))
            pf = cache.stats()["prefetch"]
            if word is None:
                assert pf["switches"] == [] and pf["model_accesses"] == 0 and pf["sketch_repeat_rate"] > 0.3
            else:
                assert [s["state"] for s in pf["switches"]][:2] == ["trial", "off"]
                assert word in pf["switches"][1]["reason"]
        finally:
            cache.destroy()


@pytest.mark.parametrize(("key", "bad"), [("prefetch_mode", "sometimes"), ("prefetch_batch", 0),
                                          ("prefetch_min_precision", 1.5), ("prefetch_min_coverage", -0.1)])
def test_new_keys_are_validated(key: str, bad: object) -> None:
    with pytest.raises(ConfigError):
        CacheSection.from_mapping({key: bad})


def test_governor_off_path_does_not_feed_the_worker() -> None:
    """Off, observe() only counts and samples: the worker sees nothing."""
    ran: list[object] = []
    g = PrefetchGovernor(PrefetchWorker(lambda b, latest: ran.extend(b), inline=True), lambda: (0, 0, 0))
    for i in range(5000):
        g.observe("a", i, True)
    assert g.state == "off" and not ran and g.stats()["sampled"] > 0


class _ReferenceOffPath:
    """The governor's off path as it was written in Python before it was compiled (OffPath must match it)."""

    def __init__(self, strides: list[int], sketch_size: int, window_end: int) -> None:
        self.strides, self.sketch_size, self.window_end = strides, sketch_size, window_end
        self.n = self.next_sample = self.stride_i = 0
        self.sampled = self.known = self.repeats = self.miss_repeats = 0
        self.last: dict[Any, Any] = {}
        self.sketch: dict[Any, list[Any]] = {}
        self.windows: list[int] = []

    def observe(self, agent: str, key: Any, miss: bool) -> None:
        n = self.n = self.n + 1
        if n >= min(self.next_sample, self.window_end):
            if n >= self.next_sample:
                prev = self.last.get(agent)
                if prev is not None:
                    self.sampled += 1
                    s = self.sketch.get(prev)
                    if s is None:
                        if len(self.sketch) >= self.sketch_size:
                            del self.sketch[next(iter(self.sketch))]
                        self.sketch[prev] = [key, 0]
                    else:
                        self.known += 1
                        if s[0] == key:
                            self.repeats += 1
                            self.miss_repeats += miss
                            s[1] += 1
                        else:
                            s[0], s[1] = key, 0
                self.stride_i = i = (self.stride_i + 1) % len(self.strides)
                self.next_sample = n + self.strides[i]
            if n >= self.window_end:
                self.windows.append(n)
                self.window_end = n + 100
        self.last[agent] = key


def test_compiled_off_path_matches_the_python_one() -> None:
    """Same counts, same sketch (order and eviction included), same window calls, on a stream mixing repeats,
    misses and new keys of three types (int, str, bytes), with a sketch small enough to evict."""
    from sutazai_hwopt._native.prefetch_offpath import OffPath

    rng = random.Random(11)
    strides = [rng.randint(1, 7) for _ in range(13)]
    windows: list[int] = []
    ref = _ReferenceOffPath(strides, 40, 100)

    def window(n: int) -> None:
        windows.append(n)
        path.window_end = n + 100

    path = OffPath(strides, 40, 100, window)
    chain: list[Any] = [1, "two", b"three", 4, "five"]
    for i in range(20000):
        agent = f"a{rng.randrange(3)}"
        key: Any = chain[i % 5] if rng.random() < 0.5 else rng.choice([rng.randrange(200), f"k{rng.randrange(50)}"])
        miss = rng.random() < 0.4
        ref.observe(agent, key, miss)
        path.observe(agent, key, miss)
    assert (path.n, path.next_sample, path.window_end) == (ref.n, ref.next_sample, ref.window_end)
    assert (path.sampled, path.known, path.repeats, path.miss_repeats) == \
        (ref.sampled, ref.known, ref.repeats, ref.miss_repeats)
    assert path.known > 100 and path.repeats > 10 and len(path.sketch) == 40
    assert list(path.sketch.items()) == list(ref.sketch.items()) and path.last == ref.last
    assert windows == ref.windows


def test_compiled_off_path_refuses_to_run_uninitialised() -> None:
    from sutazai_hwopt._native.prefetch_offpath import OffPath

    with pytest.raises(ValueError):
        OffPath.__new__(OffPath).observe("a", "k", False)
    with pytest.raises(ValueError):
        OffPath([], 10, 10, lambda n: None)
