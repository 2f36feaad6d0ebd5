"""Learned prefetching: a per-agent order-k Markov successor model with decay, and a bounded worker.

Model: prediction by partial matching over each agent's own access sequence (Cleary & Witten, "Data compression
using adaptive coding and partial string matching", 1984; applied to file prefetching by Griffioen & Appleton,
USENIX 1994, and Kroeger & Long, "probability graphs"). For every order ``o = 1..k`` the context of the last
``o`` keys keeps a small table of successors with weights; each update multiplies the context's weights by
``decay`` before adding 1 to the observed successor, so the model follows changing workflows. Every access
trains the agent's own tables and a shared table (all agents of the process), which answers while the agent's
own context has too little support (a new agent starts with what the others learned). A prediction uses
the longest context seen at least ``min_support`` times and proposes successors whose probability (their share of
the context's weight after a PPM method-C escape for unseen successors) is at least ``min_confidence`` (so a
random, Zipf-like stream yields almost no prefetches and does not pollute the cache), then follows the most likely
path while its joint probability stays above ``min_confidence``, for up to ``depth`` keys.

A scikit-learn model was considered and rejected: an online table answers in ~microseconds per access, learns
from one observation, and its confidence is a calibrated frequency; a fitted classifier needs batches, a
feature encoding of unbounded key sets, and costs 100x more per prediction.

Worker: one daemon thread fed by a bounded queue of accesses; it updates the model, predicts and loads, so
``get()`` only pays for an enqueue. Accesses are dropped (counted), not queued without limit, when the worker
falls behind; ``inline=True`` does all of it synchronously in ``get()`` (deterministic tests and benchmarks).
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any

from ..logs import get_logger

__all__ = ["MarkovPredictor", "PrefetchWorker"]

_ALL = "\x00all"   # owner of the shared table that every agent's accesses also train
_REST = object()   # successor slot holding the weight of dropped successors

log = get_logger("cache")


class MarkovPredictor:
    """Order-k successor tables with decay, one history per agent.

    Example:
        >>> m = MarkovPredictor(order=2)
        >>> for k in ["a", "b", "c"] * 5:
        ...     m.observe("agent", k)
        >>> m.observe("agent", "a")
        >>> m.predict("agent", 2)
        ['b', 'c']
    """

    def __init__(self, order: int = 2, *, decay: float = 0.95, min_confidence: float = 0.3,
                 min_support: float = 1.5, max_contexts: int = 100_000, max_successors: int = 8) -> None:
        self.order = order
        self.decay = decay
        self.min_confidence = min_confidence
        self.min_support = min_support
        self.max_contexts = max_contexts
        self.max_successors = max_successors
        self._tables: OrderedDict[tuple[Any, ...], dict[Hashable, float]] = OrderedDict()
        self._history: dict[str, deque[Hashable]] = {}
        self._lock = threading.Lock()

    def observe(self, agent: str, key: Hashable) -> None:
        """Learn that ``agent`` accessed ``key`` after its recent history."""
        with self._lock:
            hist = self._history.get(agent)
            if hist is None:
                hist = self._history[agent] = deque(maxlen=self.order)
            h = tuple(hist)
            for o in range(1, 2 * len(h) + 1):
                ctx = (agent if o <= len(h) else _ALL, *h[-(o - 1) % len(h) - 1:])
                succ = self._tables.get(ctx)
                if succ is None:
                    succ = self._tables[ctx] = {}
                    if len(self._tables) > self.max_contexts:
                        self._tables.popitem(last=False)
                else:
                    self._tables.move_to_end(ctx)
                    for s in succ:
                        succ[s] *= self.decay
                succ[key] = succ.get(key, 0.0) + 1.0
                if len(succ) > self.max_successors + 1:
                    # Drop the weakest successor but keep its mass in _REST, so the confidence of the others
                    # stays a true share (a context with many successors never looks confident).
                    weakest = min((s for s in succ if s is not _REST), key=succ.__getitem__)
                    succ[_REST] = succ.get(_REST, 0.0) + succ.pop(weakest)
            hist.append(key)

    def _next(self, agent: str, h: tuple[Any, ...]) -> list[tuple[float, Hashable]]:
        # Longest supported context of the agent's own table, then of the shared table (all agents).
        for owner in (agent, _ALL):
            for o in range(min(len(h), self.order), 0, -1):
                succ = self._tables.get((owner, *h[-o:]))
                if succ is None:
                    continue
                total = sum(succ.values())
                if total < self.min_support:
                    continue
                # PPM "method C" escape (Moffat 1990): reserve mass for an unseen successor in proportion to
                # the distinct successors seen, so a context seen twice with two outcomes is not "50% sure".
                total += len(succ)
                ranked = sorted(((w / total, s) for s, w in succ.items()), key=lambda t: -t[0])
                return [(p, s) for p, s in ranked if p >= self.min_confidence and s is not _REST]
        return []

    def predict(self, agent: str, depth: int) -> list[Hashable]:
        """Up to ``depth`` keys ``agent`` is likely to access next, most likely first."""
        with self._lock:
            hist = self._history.get(agent)
            if not hist or depth <= 0:
                return []
            h = tuple(hist)
            first = self._next(agent, h)
            out = [s for _, s in first[:depth]]
            # Follow the most likely path while its joint probability stays above min_confidence.
            cur, joint = h, first[0][0] if first else 0.0
            while first and len(out) < depth:
                cur = (*cur, first[0][1])[-self.order:]
                first = self._next(agent, cur)
                if not first or joint * first[0][0] < self.min_confidence:
                    break
                joint *= first[0][0]
                s = first[0][1]
                if s in out:
                    break
                out.append(s)
            return out[:depth]


class PrefetchWorker:
    """Runs prefetch jobs on one daemon thread with a bounded queue (or inline)."""

    def __init__(self, run: Callable[[str, Hashable], None], *, queue_size: int = 64,
                 inline: bool = False) -> None:
        self._run = run
        self.inline = inline
        self.dropped = 0
        self._q: queue.Queue[tuple[str, Hashable] | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, agent: str, key: Hashable) -> None:
        """Prefetch ``key`` for ``agent`` now (inline) or soon (thread); dropped when the queue is full."""
        if self.inline:
            self._safe(agent, key)
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="sutazai-cache-prefetch",
                                                    daemon=True)
                    self._thread.start()
        try:
            self._q.put_nowait((agent, key))
        except queue.Full:
            self.dropped += 1

    def _safe(self, agent: str, key: Hashable) -> None:
        try:
            self._run(agent, key)
        except Exception as exc:  # a failed prefetch is only a missed opportunity
            log.debug("prefetch of %r failed: %s", key, exc)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if isinstance(item[1], _Barrier):
                item[1].ev.set()
                continue
            self._safe(*item)

    def drain(self) -> None:
        """Wait until every queued prefetch ran (for tests)."""
        if self._thread is None:
            return
        done = threading.Event()
        self._q.put(("", _Barrier(done)))
        done.wait()

    def close(self) -> None:
        """Stop the thread (queued jobs are dropped)."""
        t = self._thread
        if t is None:
            return
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._q.put(None)
        t.join()
        self._thread = None


class _Barrier:
    def __init__(self, ev: threading.Event) -> None:
        self.ev = ev
