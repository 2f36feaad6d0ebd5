"""Learned prefetching that pays for itself: a Markov successor model, a batch worker, and a governor.

Model (:class:`MarkovPredictor`): prediction by partial matching over each agent's own access sequence (Cleary &
Witten, "Data compression using adaptive coding and partial string matching", 1984; applied to file prefetching
by Griffioen & Appleton, USENIX 1994, and Kroeger & Long, "probability graphs"). For every order ``o = 1..k`` the
context of the last ``o`` keys keeps a small table of successors with weights that decay by ``decay`` per update
of the context (so the model follows changing workflows; the decay is applied lazily, by growing the increment,
so an update touches one successor, not all). Every access trains the agent's own tables and a shared table (all
agents of the process), which answers while the agent's own context has too little support. A prediction uses
the longest context seen at least ``min_support`` times and proposes successors whose probability (their share
after a PPM method-C escape for unseen successors) is at least ``min_confidence``, then follows the most likely
path while its joint probability stays above ``min_confidence``, for up to ``depth`` keys.

A scikit-learn model was considered and rejected: an online table learns from one observation, answers in
microseconds, and its confidence is a calibrated frequency; a fitted classifier needs batches, a feature encoding
of unbounded key sets, and costs 100x more per prediction.

Worker (:class:`PrefetchWorker`): one daemon thread fed with *batches* of accesses; it updates the model,
predicts and loads. A full queue drops the batch and counts it (the caller never blocks, never sees an error).

Governor (:class:`PrefetchGovernor`): decides, from measurements, whether the model runs at all. The model costs
CPU on every access (tens of µs of Python); it pays only when its prefetches are later used. States:

* ``off`` — the model is not fed. The caller's thread only counts the access and remembers the agent's last
  key; one access in ``sample_every`` (on average) records the pair (previous key of the agent, key) in a small
  successor sketch (all in compiled code, ``_native.prefetch_offpath.OffPath``, which calls back at window
  ends). At the end of each window of ``window`` accesses the sketch's repeat rate (how often a sampled key was
  followed by the successor the sketch remembered) says whether a pattern exists.
* ``trial`` — a pattern appeared (repeat rate >= ``min_repeat``, and the repeats that fell on misses are at least
  ``min_coverage`` of the sampled pairs: a pattern over keys that already hit cannot pay), or a periodic blind
  probe is due: the model is fed for one window (two when the first is precise but its coverage is still low:
  the model starts nearly empty and learns in the first).
* ``on`` — the last window's precision (prefetched-and-used / prefetched) and coverage (used / (used + misses))
  were at least ``min_precision`` and ``min_coverage``; checked again at the end of every window.

A window that fails the rule switches to ``off``; the next sketch-triggered trial waits ``probe_gap`` accesses,
doubled after each failed trial (up to ``max_probe_gap``), and blind probes come at doubling intervals from
``blind_gap``. When on, the caller appends the access to a list and hands the list to the worker every ``batch``
accesses; the model predicts from each agent's last access of the batch.
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from .._native.prefetch_offpath import OffPath
from ..logs import get_logger

__all__ = ["MarkovPredictor", "PrefetchGovernor", "PrefetchWorker", "live_governors"]

_ALL = "\x00all"   # owner of the shared table that every agent's accesses also train
_REST = object()   # successor slot holding the weight of dropped successors
_RESCALE = 1e100   # lazy decay: rescale a context's weights once its increment grows past this
_UNSUPPORTED: list[Any] = []   # cached "too little support" (distinct object from an empty ranking)

log = get_logger("cache")

Access = tuple[str, Hashable]


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
        # context -> [increment, stored total, {successor: stored weight}, ranked successors or None (stale)];
        # real weight = stored / increment.
        self._tables: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()
        self._history: dict[str, deque[Hashable]] = {}
        self._lock = threading.Lock()

    def observe(self, agent: str, key: Hashable) -> None:
        """Learn that ``agent`` accessed ``key`` after its recent history."""
        with self._lock:
            self._observe(agent, key)

    def observe_many(self, accesses: Sequence[Access]) -> None:
        """:meth:`observe` for each ``(agent, key)`` in order, under one lock acquisition."""
        with self._lock:
            for agent, key in accesses:
                self._observe(agent, key)

    def _observe(self, agent: str, key: Hashable) -> None:
        hist = self._history.get(agent)
        if hist is None:
            hist = self._history[agent] = deque(maxlen=self.order)
        h = tuple(hist)
        n = len(h)
        tables = self._tables
        for ctx in [(owner, *h[n - o:]) for owner in (agent, _ALL) for o in range(1, n + 1)]:
            ent = tables.get(ctx)
            if ent is None:
                ent = tables[ctx] = [1.0, 0.0, {}, None]
                if len(tables) > self.max_contexts:
                    tables.popitem(last=False)
            else:
                tables.move_to_end(ctx)
                ent[0] /= self.decay   # lazy decay: newer observations weigh more, old weights stay put
                ent[3] = None
            inc = ent[0]
            succ = ent[2]
            succ[key] = succ.get(key, 0.0) + inc
            ent[1] += inc
            if len(succ) > 2 * self.max_successors + 1:
                # Keep the strongest max_successors; the mass of the others goes to _REST, so the confidence of
                # the rest stays a true share (a context with many successors never looks confident). Pruning
                # to half the limit at once costs one sort per max_successors new successors.
                rest = succ.pop(_REST, 0.0)
                ranked = sorted(succ.items(), key=lambda t: t[1], reverse=True)
                for s, w in ranked[self.max_successors:]:
                    rest += w
                    del succ[s]
                succ[_REST] = rest
            if inc > _RESCALE:
                for s in succ:
                    succ[s] /= inc
                ent[0], ent[1] = 1.0, ent[1] / inc
        hist.append(key)

    def seed(self, pairs: Sequence[tuple[Hashable, Hashable, float]]) -> None:
        """Add ``weight`` to ``prev -> succ`` in the shared order-1 table for each triple (a warm start from a
        sampled sketch, so a model switched on does not have to relearn what the sketch already saw repeat)."""
        with self._lock:
            for prev, succ_key, weight in pairs:
                ent = self._tables.get((_ALL, prev))
                if ent is None:
                    ent = self._tables[(_ALL, prev)] = [1.0, 0.0, {}, None]
                    if len(self._tables) > self.max_contexts:
                        self._tables.popitem(last=False)
                inc = ent[0] * weight
                ent[2][succ_key] = ent[2].get(succ_key, 0.0) + inc
                ent[1] += inc
                ent[3] = None

    def _next(self, agent: str, h: tuple[Any, ...]) -> list[tuple[float, Hashable]]:
        # Longest supported context of the agent's own table, then of the shared table (all agents).
        for owner in (agent, _ALL):
            for o in range(min(len(h), self.order), 0, -1):
                ent = self._tables.get((owner, *h[-o:]))
                if ent is None:
                    continue
                ranked = ent[3]
                if ranked is None:   # ranked once per update of the context, then reused by every prediction
                    ranked = ent[3] = self._rank(ent[0], ent[1], ent[2])
                if ranked is not _UNSUPPORTED:
                    return ranked
        return []

    def _rank(self, inc: float, total: float, succ: dict[Hashable, float]) -> list[tuple[float, Hashable]]:
        if total < self.min_support * inc:
            return _UNSUPPORTED
        # PPM "method C" escape (Moffat 1990): reserve mass for an unseen successor in proportion to the
        # distinct successors seen, so a context seen twice with two outcomes is not "50% sure".
        norm = total + len(succ) * inc
        bar = self.min_confidence * norm
        ranked = [(w / norm, s) for s, w in succ.items() if w >= bar and s is not _REST]
        ranked.sort(key=lambda t: -t[0])
        return ranked

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
    """Runs batches of accesses on one daemon thread (or inline), with a bounded backlog.

    ``run(batch, latest)``: ``latest`` is False when newer batches already wait, so predictions made from this
    one would be stale (the thread fell behind): the callee then only learns from it.

    ``submit`` never blocks and never raises: when ``queue_size`` batches are already waiting, the batch is
    dropped and its accesses are counted in ``dropped``. ``cpu_s`` is the thread CPU time spent running batches
    (measured per batch on the worker thread, never on the caller's).
    """

    def __init__(self, run: Callable[[list[Access], bool], None], *, queue_size: int = 64,
                 inline: bool = False) -> None:
        self._run = run
        self.inline = inline
        self.queue_size = queue_size
        self.dropped = 0      # accesses dropped because the backlog was full
        self.sent = 0         # batches queued (written by callers only)
        self.done = 0         # batches run (written by the worker only)
        self.ran = 0          # accesses run
        self.cpu_s = 0.0      # worker thread CPU seconds spent running them
        self.closed = False   # set by close(): its cache no longer prefetches
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, batch: list[Access]) -> None:
        """Run ``batch`` now (inline) or soon (thread); dropped and counted when the backlog is full."""
        if self.inline:
            self._safe(batch, True)
            self.ran += len(batch)
            return
        if self.sent - self.done >= self.queue_size:
            self.dropped += len(batch)
            return
        if self._thread is None:
            self._start()
        self.sent += 1
        self._q.put(batch)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sutazai-cache-prefetch", daemon=True)
                self._thread.start()

    def _safe(self, batch: list[Access], latest: bool) -> None:
        try:
            self._run(batch, latest)
        except Exception as exc:  # a failed prefetch is only a missed opportunity
            log.debug("prefetch batch failed: %s", exc)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            t0 = time.thread_time()
            self._safe(item, self.sent - self.done <= 1)
            self.cpu_s += time.thread_time() - t0
            self.ran += len(item)
            self.done += 1

    def drain(self) -> None:
        """Wait until every queued batch ran (tests and benchmarks)."""
        if self._thread is None:
            return
        done = threading.Event()
        self._q.put(done)
        done.wait()

    def close(self) -> None:
        """Stop the thread (queued batches are dropped)."""
        self.closed = True
        t = self._thread
        if t is None:
            return
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, threading.Event):
                item.set()
            elif item is not None:
                self.done += 1
        self._q.put(None)
        t.join()
        self._thread = None


OFF, TRIAL, ON = "off", "trial", "on"

#: Why the governor is in its state, as a short code (``reason`` says it in words, with the figures).
REASON_CODES = ("watching", "pattern", "probe", "learning", "pays", "low_precision", "low_coverage", "forced")

_LIVE: weakref.WeakSet[PrefetchGovernor] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()
_SEQ = itertools.count(1)


def live_governors() -> list[PrefetchGovernor]:
    """The governors of this process whose cache is still open, oldest first.

    A connected agent reports their decisions to the host service (``host.agent_prefetch``); holding no strong
    reference, the registry never keeps a cache alive.
    """
    with _LIVE_LOCK:
        found = list(_LIVE)
    return sorted((g for g in found if not g.worker.closed), key=lambda g: g.seq)


def _register(governor: PrefetchGovernor, label: str) -> str:
    """Add ``governor`` to the registry; returns its label, made unique among the open ones (``ns``, ``ns#3``)."""
    with _LIVE_LOCK:
        governor.seq = next(_SEQ)
        taken = {g.label for g in _LIVE if not g.worker.closed}
        _LIVE.add(governor)
    return label if label not in taken else f"{label}#{governor.seq}"


class PrefetchGovernor:
    """Feeds the worker only while prefetching pays (see the module docstring for the rule).

    ``observe(agent, key, miss)`` is the only call on the caller's hot path; it is rebound when the state changes, so
    each state's path is one short function. ``signals()`` returns the cache's cumulative ``(prefetched, used,
    misses)`` counters; the governor compares them window by window.

    Example:
        >>> ran = []
        >>> w = PrefetchWorker(lambda batch, latest: ran.extend(batch), inline=True)
        >>> g = PrefetchGovernor(w, lambda: (0, 0, 0), mode="always", batch=1)
        >>> g.observe("agent", "k", True)
        >>> ran, g.state
        ([('agent', 'k')], 'on')
    """

    def __init__(self, worker: PrefetchWorker, signals: Callable[[], tuple[int, int, int]], *,
                 seed: Callable[[list[tuple[Hashable, Hashable, float]]], None] | None = None,
                 mode: str = "auto", batch: int = 8, window: int = 1024, sample_every: int = 16,
                 min_precision: float = 0.4, min_coverage: float = 0.05, min_repeat: float = 0.3,
                 sketch_size: int = 4096, probe_gap: int = 16384, max_probe_gap: int = 1 << 18,
                 blind_gap: int = 1 << 17, max_blind_gap: int = 1 << 22, label: str = "cache") -> None:
        self.worker = worker
        self._signals = signals
        self._seed = seed
        self.mode = mode
        self.batch = max(1, batch)
        self.window = window
        self.sample_every = max(1, sample_every)
        self.min_precision = min_precision
        self.min_coverage = min_coverage
        self.min_repeat = min_repeat
        self.sketch_size = sketch_size
        self._probe_gap0, self._max_probe_gap = probe_gap, max_probe_gap
        self._blind_gap, self._max_blind_gap = blind_gap, max_blind_gap
        rng = random.Random(0x5EED)   # strides of mean sample_every, varied so periodic streams do not alias
        strides = [rng.randint(1, 2 * self.sample_every - 1) for _ in range(61)]
        # The off path, compiled: the access count ``n``, the window's end, each agent's last key, the sketch
        # (sampled key -> [successor seen last, times it repeated]) and its counts; it calls _window_off.
        self._path = OffPath(strides, sketch_size, window, self._window_off)
        self._batch_buf: list[Access] = []
        self._fails = 0
        self._extended = False
        self._probe_at = 0
        self._blind_at = blind_gap
        self._base = (0, 0, 0)
        self._on_accesses = 0            # accesses fed to the model
        self.state = OFF
        self.reason = "watching: no pattern seen yet"
        self.reason_code = "watching"     # one of REASON_CODES
        self.switch_count = 0             # state changes since construction (``switches`` keeps the last 32)
        self.precision = 0.0              # of the last window with the model on
        self.coverage = 0.0
        self.repeat_rate = 0.0            # of the sketch, last window with the model off
        self.miss_repeat_rate = 0.0       # the same, counting only repeats on accesses that missed
        self.switches: deque[tuple[int, str, str]] = deque(maxlen=32)
        self.observe: Callable[[str, Hashable, bool], None] = self._path.observe
        self.seq = 0
        self.label = ""
        self.label = _register(self, label)   # the name this process reports it under
        if mode == "always":
            self._switch(ON, "forced", "forced on (prefetch_mode='always')")

    # ---- hot path (off: OffPath.observe, compiled) --------------------------------------------------------
    @property
    def _n(self) -> int:
        """Accesses observed."""
        return self._path.n

    def _observe_on(self, agent: str, key: Hashable, miss: bool) -> None:
        self._path.n += 1
        b = self._batch_buf
        b.append((agent, key))
        if len(b) >= self.batch:
            self._flush()

    # ---- off: the window's decision (the sampling runs in OffPath) -----------------------------------------
    def _window_off(self, n: int) -> None:
        p = self._path
        p.window_end = n + self.window
        pattern = False
        if p.known >= 16:   # enough evidence (else keep accumulating over the next window)
            self.repeat_rate = p.repeats / p.known
            # A pattern pays only if it predicts misses: repeats whose access missed, as a share of known.
            self.miss_repeat_rate = p.miss_repeats / p.known
            p.known = p.repeats = p.miss_repeats = 0
            pattern = self.repeat_rate >= self.min_repeat and self.miss_repeat_rate >= self.min_coverage
        if n >= self._probe_at and pattern:
            self._switch(TRIAL, "pattern",
                         f"pattern: sketch repeat rate {self.repeat_rate:.2f} >= {self.min_repeat}, "
                         f"on misses {self.miss_repeat_rate:.2f} >= {self.min_coverage}")
        elif n >= self._blind_at:
            self._blind_at = n + self._blind_gap
            self._blind_gap = min(self._blind_gap * 2, self._max_blind_gap)
            self._switch(TRIAL, "probe", "periodic probe")

    # ---- on: batches to the worker, and the rule -----------------------------------------------------------
    def _flush(self) -> None:
        b = self._batch_buf
        self._batch_buf = []
        self._on_accesses += len(b)
        self.worker.submit(b)
        p = self._path
        if p.n >= p.window_end:
            self._evaluate(p.n)

    def _evaluate(self, n: int) -> None:
        self._path.window_end = n + self.window
        p, u, m = self._signals()
        dp, du, dm = p - self._base[0], u - self._base[1], m - self._base[2]
        self._base = (p, u, m)
        self.precision = du / dp if dp > 0 else 0.0
        self.coverage = du / (du + dm) if du + dm > 0 else 0.0
        if self.mode == "always":
            return
        if self.state == TRIAL and not self._extended and self.precision >= self.min_precision and du > 0:
            # The model started nearly empty: its first window learns. Precise but too few prefetches used yet:
            # judge the coverage on one more window before backing off.
            self._extended = True
            self.reason_code = "learning"
            self.reason = f"trial extended: precision {self.precision:.2f}, coverage {self.coverage:.2f} (learning)"
            return
        if self.precision >= self.min_precision and self.coverage >= self.min_coverage:
            self._fails = 0
            if self.state != ON:
                self._switch(ON, "pays", f"pays: precision {self.precision:.2f}, coverage {self.coverage:.2f}")
            return
        self._fails += 1
        gap = min(self._probe_gap0 << min(self._fails - 1, 30), self._max_probe_gap)
        self._probe_at = n + gap
        low_precision = self.precision < self.min_precision
        why = (f"precision {self.precision:.2f} < {self.min_precision}" if low_precision
               else f"coverage {self.coverage:.2f} < {self.min_coverage}")
        self._switch(OFF, "low_precision" if low_precision else "low_coverage",
                     f"does not pay: {why}; next trial after {gap} accesses")

    def _switch(self, state: str, code: str, reason: str) -> None:
        self.state, self.reason, self.reason_code = state, reason, code
        self.switch_count += 1
        self._extended = False
        self.switches.append((self._n, state, reason))
        p = self._path
        p.window_end = p.n + self.window
        if state == OFF:
            self._batch_buf = []
            p.known = p.repeats = p.miss_repeats = 0
            self.observe = p.observe
        else:
            if self._seed is not None and p.sketch:
                # Warm start: the successors the sketch saw repeat, weighted by how often.
                self._seed([(k, s, 1.0 + r) for k, (s, r) in p.sketch.items() if r > 0])
            self._base = self._signals()
            self.observe = self._observe_on

    # ---- figures --------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """State, the reason for it, the measurements behind it and what the model cost."""
        w = self.worker
        cost_us = w.cpu_s / w.ran * 1e6 if w.ran and not w.inline else None
        return {
            "mode": self.mode, "state": self.state, "reason": self.reason, "reason_code": self.reason_code,
            "requests": self._n,
            "precision": self.precision, "coverage": self.coverage, "sketch_repeat_rate": self.repeat_rate,
            "sketch_miss_repeat_rate": self.miss_repeat_rate,
            "sampled": self._path.sampled, "model_accesses": self._on_accesses,
            "next_trial_at": max(self._probe_at, self._n) if self.state == OFF else None,
            "next_probe_at": self._blind_at if self.state == OFF else None,
            "model_cpu_s": w.cpu_s, "model_cpu_us_per_access": cost_us,
            "dropped": w.dropped,
            "switches": [{"at": at, "state": st, "reason": r} for at, st, r in self.switches],
            "switch_count": self.switch_count,
        }

    def summary(self) -> dict[str, Any]:
        """The decision and the figures behind it in a few fields: what a connected agent reports to the host
        service (``host.agent_prefetch``). Safe to call from another thread (it only reads)."""
        prefetched, used, _ = self._signals()
        return {"cache": self.label, "mode": self.mode, "state": self.state, "reason": self.reason,
                "reason_code": self.reason_code, "precision": self.precision, "coverage": self.coverage,
                "prefetched": prefetched, "used": used, "requests": self._n, "switches": self.switch_count}
