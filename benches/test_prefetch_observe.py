"""What observing an access costs the agent's thread while the prefetch governor keeps the model off (issue 20:
"no more than a few hundred nanoseconds"), as pytest-benchmark groups.

Run:  python -m pytest benches/test_prefetch_observe.py --benchmark-only --benchmark-columns=median,iqr,rounds

Groups, anchor first; the subject records ``ratio_to_<anchor>`` and ``ns_over_anchor`` (per access) in
``extra_info``. One timed call is 1,000 accesses (``extra_info["unit"]``):

* ``prefetch-observe-l1-hit``: ``IntelligentCacheSystem.get`` of L1 hits (the compiled front) with
  ``enable_prefetch: False`` (anchor) and with the default (``prefetch_mode: "auto"``; on this stream of 1,000
  distinct keys read in turn the governor stays off, so what is added is its off path);
* ``prefetch-observe-governor``: the governor's ``observe`` alone (off, sampling one access in 16 into its sketch)
  against a Python method of the same signature that does nothing (anchor: the cost of any call from the front),
  both looked up per access as the front does.

The machine is shared: quote medians and ratios of one run only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sutazai_hwopt.cache.codec import key_bytes
from sutazai_hwopt.cache.prefetch import PrefetchGovernor, PrefetchWorker
from sutazai_hwopt.cache.system import IntelligentCacheSystem
from sutazai_hwopt.testing import throwaway_namespace

N = 1000
KEYS = [f"key-{i}" for i in range(N)]
MEDIANS: dict[str, float] = {}


def _record(benchmark: Any, name: str, anchor: str | None = None) -> None:
    """Keep the median of this run; with an anchor measured earlier, the ratio and the difference per access."""
    benchmark.extra_info["unit"] = f"{N} accesses"
    stats = getattr(benchmark, "stats", None)
    if stats is None:        # --benchmark-disable
        return
    MEDIANS[name] = stats.stats.median
    if anchor is not None and anchor in MEDIANS:
        benchmark.extra_info[f"ratio_to_{anchor}"] = round(MEDIANS[name] / MEDIANS[anchor], 3)
        benchmark.extra_info["ns_over_anchor"] = round((MEDIANS[name] - MEDIANS[anchor]) / N * 1e9, 1)


@pytest.fixture(scope="module")
def caches() -> Iterator[dict[str, IntelligentCacheSystem]]:
    # One namespace each: a put through one would make the other's L1 copies stale (L2 stripe epochs).
    with throwaway_namespace("bpo") as ns_off, throwaway_namespace("bpa") as ns_auto:
        out = {}
        for name, ns, extra in (("off", ns_off, {"enable_prefetch": False}), ("auto", ns_auto, {})):
            c = out[name] = IntelligentCacheSystem({"namespace": ns, "l1_size": 1 << 24, "l2_size": 8 << 20,
                                                    "l3_size": 0, **extra})
            for k in KEYS:
                c.put(k, b"v" * 64, "agent")
            _gets(c)
            assert c.stats()["hits"]["L1"] >= 0.9 * N   # (a few stay L2 hits: the L1 policy admits by frequency)
        try:
            yield out
        finally:
            for c in out.values():
                c.destroy()


def _gets(cache: IntelligentCacheSystem) -> None:
    get = cache.get
    for k in KEYS:
        get(k, "agent")


@pytest.mark.benchmark(group="prefetch-observe-l1-hit")
def test_l1_hit_prefetch_disabled(benchmark: Any, caches: dict[str, IntelligentCacheSystem]) -> None:
    benchmark.extra_info["role"] = "anchor"
    benchmark(_gets, caches["off"])
    _record(benchmark, "l1_disabled")


@pytest.mark.benchmark(group="prefetch-observe-l1-hit")
def test_l1_hit_prefetch_default_off(benchmark: Any, caches: dict[str, IntelligentCacheSystem]) -> None:
    benchmark.extra_info["role"] = "ours"
    benchmark(_gets, caches["auto"])   # (a periodic probe every 131,072+ accesses runs the model one window)
    _record(benchmark, "l1_auto_off", "l1_disabled")


class _Noop:
    def observe(self, agent: str, key: Any, miss: bool) -> None:
        pass


def _calls(observer: Any, pairs: list[tuple[str, bytes]]) -> None:
    for agent, kb in pairs:   # looked up per access, as the compiled front does (the governor rebinds it)
        observer.observe(agent, kb, False)


PAIRS = [("agent", key_bytes(k)) for k in KEYS]


@pytest.mark.benchmark(group="prefetch-observe-governor")
def test_observe_noop_anchor(benchmark: Any) -> None:
    benchmark.extra_info["role"] = "anchor"
    benchmark(_calls, _Noop(), PAIRS)
    _record(benchmark, "noop")


@pytest.mark.benchmark(group="prefetch-observe-governor")
def test_observe_governor_off(benchmark: Any) -> None:
    benchmark.extra_info["role"] = "ours"
    worker = PrefetchWorker(lambda batch, latest: None, inline=True)
    gov = PrefetchGovernor(worker, lambda: (0, 0, 0), blind_gap=1 << 60)   # no periodic probe mid-run
    benchmark(_calls, gov, PAIRS)
    assert gov.state == "off" and gov.stats()["sampled"] > 0
    _record(benchmark, "governor_off", "noop")
    worker.close()
