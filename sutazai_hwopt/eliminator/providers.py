"""Remedy providers: the hooks the built-in strategies name, backed by the real shared components.

The strategies only propose ``hook:<name>`` actions; these classes perform them, each returning a
:class:`~.actions.HookResult` with its undo, so every remedy goes through the eliminator's measure / apply /
validate / keep-or-roll-back path. The host service attaches them (:func:`host_providers`); any process may
(``eliminator.attach_provider(p)``).

==================  ====  =======================================================================================
hook                risk  what it does (undo)
==================  ====  =======================================================================================
pool.collect_dead   low   references of dead agents and expired grants in every pool of the namespace, and the
                          cache pins of dead processes in L2/L3; freed pages go back to the kernel (nothing to
                          undo: their owners are gone)
cache.shrink        low   lowers the L1 budget factor the daemon publishes (x ``1 - cache_shrink_fraction``:
                          every connected agent evicts its L1 down to it), then evicts ``cache_shrink_fraction``
                          of the shared L2/L3 entries and returns the freed pages to the kernel (undo: the L1
                          factor goes back up; evicted entries reload on demand)
balancer.shed       med.  adds phantom outstanding requests to the backend in the host-wide balancer table, so
                          every process's load-aware algorithm sends it less (undo: removes them)
balancer.drain      high  publishes an ejection of ``drain_s`` in the table: every process stops sending to it
                          (undo: withdraws the ejection; processes that adopted it probe again when it ends)
agent.restart       high  only with ``restart_leaking_agents`` (the operator's consent): SIGTERM to the leaking
                          agent, for its supervisor to restart it, or the operator's own restart function
==================  ====  =======================================================================================

A provider that fails part-way leaves nothing applied: its steps run under :class:`Steps`, which undoes the
steps already done, newest first, before the error reaches the eliminator (recorded as ``failed``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..errors import InvalidArgumentError, NotFoundError, StateError
from ..logs import get_logger
from .actions import HookResult

__all__ = ["AgentRestarter", "BalancerRemedies", "MemoryRemedies", "Steps", "host_providers"]

log = get_logger("eliminator")
_T = TypeVar("_T")


def _nothing_to_undo(what: str) -> Callable[[], None]:
    return lambda: log.info("%s cannot be undone and needs no undo; kept", what)


class Steps:
    """All or nothing for a remedy of several steps: ``with Steps() as s: s.do(apply, undo)``.

    A step that raises (or any error inside the block) undoes the steps already done, newest first, and the
    error propagates; :meth:`result` hands the eliminator one undo for all the steps.
    """

    def __init__(self) -> None:
        self._undos: list[Callable[[], Any]] = []

    def do(self, apply: Callable[[], _T], undo: Callable[[_T], Any] | None) -> _T:
        out = apply()
        if undo is not None:
            self._undos.append(lambda: undo(out))
        return out

    def undo_all(self) -> None:
        """Undo every step done so far, newest first; an undo that raises is logged and the rest still run."""
        undos, self._undos = self._undos, []
        for u in reversed(undos):
            try:
                u()
            except Exception:
                log.exception("undo of a remedy step failed")

    def result(self, changed: bool, **details: Any) -> HookResult:
        return HookResult(changed, self.undo_all, details)

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.undo_all()


class MemoryRemedies:
    """``pool.collect_dead`` and ``cache.shrink`` over a namespace's pools and shared cache tiers.

    Args:
        memory: the namespace's ``MemoryPoolManager``.
        namespace: the cache namespace (L2/L3 segments); tiers are attached only when they exist.
        shrink_fraction: share of the tiers' entries ``cache.shrink`` evicts.
    """

    def __init__(self, memory: Any, *, namespace: str, shrink_fraction: float = 0.5) -> None:
        if not 0.0 < shrink_fraction < 1.0:
            raise InvalidArgumentError(f"shrink_fraction must be in (0, 1), got {shrink_fraction!r}")
        self.memory = memory
        self.namespace = namespace
        self.shrink_fraction = shrink_fraction
        self._tiers: dict[str, Any] = {}
        self._l1_word: Any = None
        #: the L1 shrinks in force (token -> multiplier): the published factor is their product, so undoing
        #: one in any order leaves exactly the others
        self._l1_shrinks: dict[int, float] = {}
        self._l1_reasons: dict[int, str] = {}
        self._l1_tokens = 0

    def hooks(self) -> Mapping[str, Callable[..., HookResult]]:
        return {"pool.collect_dead": self.collect_dead, "cache.shrink": self.shrink_cache}

    def tiers(self) -> dict[str, Any]:
        """The namespace's shared tiers that exist (``l2``, ``l3``), attached once and kept."""
        from ..cache.shared_index import MIN_TIER, SharedTier
        from ..shm import list_segments

        present = set(list_segments(self.namespace, "cache"))
        for level in ("l2", "l3"):
            if level in present and level not in self._tiers:
                self._tiers[level] = SharedTier(self.namespace, level, MIN_TIER)
        return {k: v for k, v in self._tiers.items() if k in present}

    def collect(self) -> dict[str, int]:
        """Reclaim now: dead agents' pool references and expired grants, dead processes' cache pins; then
        return the freed pages to the kernel (``released_bytes``) when anything was reclaimed."""
        out = dict(self.memory.collect_garbage())
        tiers = self.tiers().values()
        out["pins"] = sum(int(t.reclaim_dead()) for t in tiers)
        out["released_bytes"] = (int(self.memory.trim()) + sum(int(t.heap.trim()) for t in tiers)
                                 if any(out.values()) else 0)
        return out

    def collect_dead(self, **_: Any) -> HookResult:
        """The ``pool.collect_dead`` remedy (low risk)."""
        with Steps() as s:
            got = s.do(self.collect, None)
        return HookResult(any(got.values()), _nothing_to_undo("reclaiming dead agents' memory"), got)

    def l1_word(self) -> Any:
        """The namespace's L1 budget word (:mod:`~sutazai_hwopt.cache.l1_budget`), or None when no daemon
        owns the namespace (then no agent follows one, and ``cache.shrink`` acts on the shared tiers only)."""
        if self._l1_word is None:
            from ..cache.l1_budget import BudgetWord

            try:
                self._l1_word = BudgetWord.attach(self.namespace)
            except NotFoundError:
                return None
        return self._l1_word

    def _publish_l1(self) -> dict[str, Any]:
        word = self.l1_word()
        factor = 1.0
        for m in self._l1_shrinks.values():
            factor *= m
        reason = "; ".join(dict.fromkeys(self._l1_reasons.values())) or None
        return dict(word.write(factor, reason).as_dict())

    def _shrink_l1(self, frac: float, why: str) -> int | None:
        """Lower the published L1 factor by ``1 - frac``; returns the token its undo takes (None: no word)."""
        if self.l1_word() is None:
            return None
        self._l1_tokens += 1
        token = self._l1_tokens
        self._l1_shrinks[token] = 1.0 - frac
        self._l1_reasons[token] = why
        self._publish_l1()
        return token

    def _restore_l1(self, token: int | None) -> None:
        if token is None or self._l1_shrinks.pop(token, None) is None:
            return
        self._l1_reasons.pop(token, None)
        state = self._publish_l1()
        log.info("L1 budget factor back to %.3g", state["factor"])

    def shrink_cache(self, fraction: float | None = None, bottleneck_type: str | None = None,
                     **_: Any) -> HookResult:
        """The ``cache.shrink`` remedy (low risk): lower the agents' L1 budget factor (undone by the
        result's undo), then evict a share of L2's and L3's entries (they reload on demand)."""
        frac = self.shrink_fraction if fraction is None else float(fraction)
        if not 0.0 < frac < 1.0:
            raise InvalidArgumentError(f"fraction must be in (0, 1), got {frac!r}")
        evicted: dict[str, int] = {}
        released = 0
        with Steps() as s:
            why = f"cache.shrink ({bottleneck_type})" if bottleneck_type else "cache.shrink"
            token = s.do(lambda: self._shrink_l1(frac, why), self._restore_l1)
            for level, tier in self.tiers().items():
                n = int(len(tier.index) * frac)
                if n > 0:
                    evicted[level] = int(tier.index.evict(n))
                    released += int(tier.heap.trim())
            l1 = self.l1_word().read().as_dict() if token is not None else None
            return s.result(token is not None or any(evicted.values()), evicted=evicted, released_bytes=released,
                            l1_budget=l1)

    def close(self) -> None:
        """Detach; L1 shrinks still in force are withdrawn (agents get their configured budget back)."""
        if self._l1_shrinks and self._l1_word is not None:
            self._l1_shrinks.clear()
            self._l1_reasons.clear()
            self._publish_l1()
        if self._l1_word is not None:
            self._l1_word.close()
            self._l1_word = None
        for tier in self._tiers.values():
            tier.close()
        self._tiers.clear()


class BalancerRemedies:
    """``balancer.shed`` and ``balancer.drain`` through the host-wide balancer table (``balancer.shared``).

    Every agent process whose ``DynamicLoadBalancer`` uses the table (``shared=SharedState.attach(name)``)
    sees what these write: the host-wide outstanding count (shed) and published ejections (drain).

    Args:
        table: the table's name (``SharedState.create(table)`` in some process); attached on first use.
        drain_s: how long a drain lasts at most (its undo ends it early).
        clock: the balancers' clock (``time.monotonic``, host-wide on Linux).
    """

    def __init__(self, table: str, *, drain_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.drain_s = drain_s
        self._clock = clock
        self._state: Any = None
        self._phantom: dict[str, int] = {}

    def hooks(self) -> Mapping[str, Callable[..., HookResult]]:
        return {"balancer.shed": self.shed, "balancer.drain": self.drain}

    def metrics(self) -> Mapping[str, Callable[..., float]]:
        """``custom:balancer.backend_load:<backend>``: the backend's real host-wide load (see :meth:`load`)."""
        return {"balancer.backend_load": self.load}

    def shared(self) -> Any:
        if self._state is None:
            from ..balancer.shared import SharedState

            try:
                self._state = SharedState.attach(self.table)
            except NotFoundError:
                raise StateError(f"no host-wide balancer table {self.table!r}: the agents' balancers create it "
                                 f"with SharedState.create({self.table!r})") from None
        return self._state

    def load(self, backend: str) -> float:
        """Requests on ``backend``: what its reporter publishes in flight and queued, else the balancers'
        host-wide outstanding count without this provider's phantom requests."""
        st = self.shared()
        pub = st.published(backend)
        if pub is not None:
            return float(pub["infl"] + pub["queue"])
        return float(max(0, st.outstanding(backend) - self._phantom.get(backend, 0)))

    @staticmethod
    def _backend(backend: Any) -> str:
        if not isinstance(backend, str) or not backend:
            raise InvalidArgumentError(f"the backend to act on must be named, got {backend!r}")
        return backend

    def shed(self, backend: str | None = None, **_: Any) -> HookResult:
        """The ``balancer.shed`` remedy: as many phantom requests as it has real ones (at least one), so the
        load-aware algorithms of every process give it about half its share."""
        sid = self._backend(backend)
        st = self.shared()
        n = max(1, st.outstanding(sid) - self._phantom.get(sid, 0))

        def add(k: int) -> int:
            st.add_outstanding(sid, k)
            self._phantom[sid] = self._phantom.get(sid, 0) + k
            return k

        def remove(k: int) -> None:
            k = min(k, self._phantom.get(sid, 0), max(0, st.outstanding(sid)))
            st.add_outstanding(sid, -k)
            self._phantom[sid] = max(0, self._phantom.get(sid, 0) - k)

        with Steps() as s:
            s.do(lambda: add(n), remove)
            return s.result(True, backend=sid, phantom_requests=n)

    def drain(self, backend: str | None = None, **_: Any) -> HookResult:
        """The ``balancer.drain`` remedy: a host-wide ejection of ``drain_s`` seconds."""
        sid = self._backend(backend)
        st = self.shared()
        previous = st.ejected_until(sid)
        until = self._clock() + self.drain_s

        def withdraw(_: None) -> None:
            now = self._clock()
            st.publish_ejection(sid, previous if previous > now else now)

        with Steps() as s:
            s.do(lambda: st.publish_ejection(sid, until), withdraw)
            return s.result(True, backend=sid, drained_for_s=self.drain_s)

    def close(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None


class AgentRestarter:
    """``agent.restart``: restart a leaking agent. Register it only with the operator's consent.

    Args:
        pid_of: agent id -> its main pid (the coordinator's registry), or None when unknown.
        restart: ``restart(agent_id, pid)`` does the restart; default: SIGTERM, for the agent's supervisor
            (systemd, a container's restart policy, the fleet launcher) to start it again.
    """

    def __init__(self, pid_of: Callable[[str], int | None],
                 restart: Callable[[str, int], Any] | None = None) -> None:
        self.pid_of = pid_of
        self.restart = restart or (lambda _agent, pid: os.kill(pid, signal.SIGTERM))

    def hooks(self) -> Mapping[str, Callable[..., HookResult]]:
        return {"agent.restart": self.restart_agent}

    def restart_agent(self, agent: str | None = None, **_: Any) -> HookResult:
        if not isinstance(agent, str) or not agent:
            raise InvalidArgumentError(f"the agent to restart must be named, got {agent!r}")
        pid = self.pid_of(agent)
        if not pid:
            raise StateError(f"agent {agent!r} has no known process to restart")
        self.restart(agent, pid)
        log.warning("restarted leaking agent %s (pid %d) with the operator's consent", agent, pid)
        return HookResult(True, _nothing_to_undo(f"restarting {agent}"), {"agent": agent, "pid": pid})

    def close(self) -> None:
        """Nothing to release (every provider has ``close()``)."""


def host_providers(config: Any, *, memory: Any, namespace: str,
                   pid_of: Callable[[str], int | None]) -> list[Any]:
    """The providers the host service attaches, from its configuration (``HwoptConfig``)."""
    el = config.eliminator
    out: list[Any] = [MemoryRemedies(memory, namespace=namespace, shrink_fraction=el.cache_shrink_fraction),
                      BalancerRemedies(el.balancer_table or namespace, drain_s=el.drain_s)]
    if el.restart_leaking_agents:
        out.append(AgentRestarter(pid_of))
    return out
