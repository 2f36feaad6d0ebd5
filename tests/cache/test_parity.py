"""One policy list: the compiled core's name -> kind table is the definition; every other place must agree.

The Python side imports the core's tuple (``cache.policies``, the reference model, the configuration's choices),
so those agree by construction; what can still drift is checked here: the descriptions, the documentation, the
default, and whether each name runs the algorithm the reference model implements under that name.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from sutazai_hwopt._native import cache_core
from sutazai_hwopt.cache import Cache, policies, reference
from sutazai_hwopt.cache.reference import ReferenceCache
from sutazai_hwopt.config import CacheSection

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cache.md"


def _docs(text: str) -> dict[str, tuple[str, ...]]:
    """The policy names docs/cache.md lists: in the ``Cache(...)`` row, in the policy table, and its default."""
    sig = re.search(r"`policy` one of `([a-z0-9 ]+)`", text)
    start = text.index("**Policies**")
    table = text[start:text.index("\n\n", text.index("| name |", start))]
    rows = re.findall(r"^\| `([a-z0-9]+)`( \(default\))? \|", table, re.M)
    return {"docs signature": tuple(sig.group(1).split()) if sig else (),
            "docs table": tuple(name for name, _ in rows),
            "docs default": tuple(name for name, mark in rows if mark)}


def sides() -> dict[str, tuple[str, ...]]:
    """Every place that names the policies, as it is now."""
    core = cache_core.CacheCore(16)
    core_default = "adaptive" if core.adaptive else cache_core.POLICIES[core.kind]
    api_default = inspect.signature(Cache.__init__).parameters["policy"].default
    return {
        "cache.policies": policies.POLICIES,
        "reference model": reference.POLICIES,
        "config choices": tuple(CacheSection.__dataclass_fields__["policy"].metadata["choices"]),
        "descriptions": tuple(policies._DESCRIPTIONS),
        **_docs(DOCS.read_text()),
        "defaults": (policies.DEFAULT_POLICY, CacheSection().policy, core_default, api_default),
        "selectable": reference.SELECTABLE,
    }


def mismatches(core: tuple[str, ...], selectable: tuple[str, ...], found: dict[str, tuple[str, ...]]) -> list[str]:
    """What disagrees with the core's ``POLICIES``/``SELECTABLE`` (empty when everything matches)."""
    out = []
    for side in ("cache.policies", "reference model", "config choices", "descriptions", "docs signature",
                 "docs table"):
        if found[side] != core:
            out.append(f"{side}: {found[side]} != core {core}")
    (default,) = found["docs default"] or ("<none>",)
    if len(set(found["defaults"])) != 1 or default != found["defaults"][0] or default not in core:
        out.append(f"defaults disagree: docs {default!r}, python/config/core/Cache {found['defaults']}")
    if found["selectable"] != selectable or not set(selectable) <= set(core):
        out.append(f"selectable: {found['selectable']} != core {selectable}")
    return out


def test_every_side_matches_the_core() -> None:
    assert mismatches(cache_core.POLICIES, cache_core.SELECTABLE, sides()) == []


@pytest.mark.parametrize("side", ["cache.policies", "reference model", "config choices", "descriptions",
                                  "docs signature", "docs table"])
@pytest.mark.parametrize("change", ["add", "drop", "reorder"])
def test_a_change_on_one_side_is_reported(side: str, change: str) -> None:
    """The check above is not vacuous: a policy added, dropped or moved on any one side fails it."""
    found = sides()
    names = found[side]
    found[side] = {"add": (*names, "fifo"), "drop": names[:-1], "reorder": names[1:] + names[:1]}[change]
    assert [m for m in mismatches(cache_core.POLICIES, cache_core.SELECTABLE, found) if m.startswith(side)]
    core = {"add": (*cache_core.POLICIES, "fifo"), "drop": cache_core.POLICIES[:-1],
            "reorder": cache_core.POLICIES[::-1]}[change]
    assert mismatches(core, cache_core.SELECTABLE, sides())   # and so does a change of the core alone


def test_a_changed_default_is_reported() -> None:
    found = sides()
    found["defaults"] = ("lru", *found["defaults"][1:])
    assert mismatches(cache_core.POLICIES, cache_core.SELECTABLE, found)


@pytest.mark.parametrize("policy", cache_core.POLICIES)
def test_each_name_selects_its_kind(policy: str) -> None:
    """``POLICIES[kind]`` names the kind the core runs (the adaptive policy starts as W-TinyLFU)."""
    c = cache_core.CacheCore(16, policy)
    if policy == "adaptive":
        assert c.adaptive and cache_core.POLICIES[c.kind] == "wtinylfu"
    else:
        assert not c.adaptive and cache_core.POLICIES[c.kind] == policy
        assert c._policy_state()["kind"] == policy


@pytest.mark.parametrize("policy", cache_core.POLICIES)
def test_each_name_runs_the_reference_algorithm_of_that_name(policy: str) -> None:
    """On a skewed trace with a loop phase the policies' hit counts differ; each matches its model exactly."""
    rng = np.random.default_rng(7)
    trace = np.concatenate([rng.zipf(1.2, 3000) % 400, np.arange(3000) % 90, rng.integers(0, 300, 2000)])
    trace = trace.astype(np.int64)
    model = ReferenceCache(64, policy, climb_period=512)
    want = sum(model.access(int(k)) for k in trace)
    assert cache_core.CacheCore(64, policy, climb_period=512)._simulate(trace) == want
