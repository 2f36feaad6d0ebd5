"""What the host service does on its passes besides detection: reclaim, predict, explain.

* **Garbage collection** every ``hardware.gc_interval_s``: the pool references of dead agents (and grants to
  agents that never attached within ``grant_grace_s``) and the cache pins of dead processes, with nobody asking.
* **Prediction** (``eliminator.prediction_enabled``): time to exhaustion of host memory (the profiler's
  MemAvailable trend) and of each shared pool of the namespace (its free bytes over the recent passes). An
  exhaustion sooner than ``prediction_horizon_s`` becomes a ``memory_exhaustion_predicted`` finding: listed with
  the others (dashboard, ``/api/bottlenecks``), sent to the alert callbacks when it appears, and handed to the
  eliminator, which runs only the low-risk remedies for it.
* **Anomaly scores** every ``eliminator.anomaly_interval_s``: the profiler's IsolationForest score of each
  agent, written beside each finding that names the agent (``anomaly_scores``).

It also builds and attaches the remedy providers (:func:`~sutazai_hwopt.eliminator.providers.host_providers`).
The service calls it under its lock; nothing here waits on I/O beyond /proc and the pools' locks.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import HwoptError
from ..logs import get_logger

__all__ = ["Upkeep"]

log = get_logger("master")
#: passes of pool history the pool predictions fit (at the detection cadence: about 4 minutes)
_POOL_HISTORY = 120
#: the host prediction's fit window (passes of the profiler's ring) and how often it runs
_PREDICT_WINDOW = 120
PREDICT_EVERY_S = 10.0


class Upkeep:
    """The periodic work of one :class:`~.service.HostService` (see the module docstring)."""

    def __init__(self, service: Any, *, clock: Callable[[], float] = time.monotonic) -> None:
        from ..eliminator.providers import MemoryRemedies, host_providers

        self.service = service
        cfg = service.config
        self._clock = clock
        self.gc_interval_s = cfg.hardware.gc_interval_s
        self.anomaly_interval_s = cfg.eliminator.anomaly_interval_s
        self._next_gc = -math.inf
        self._next_predict = -math.inf
        self._next_anomaly = -math.inf
        self.gc_last: dict[str, Any] = {}
        self.gc_totals = {"agents": 0, "blocks": 0, "pins": 0, "released_bytes": 0, "passes": 0}
        self._pool_history: dict[str, deque[tuple[float, float]]] = {}
        self.predictions: dict[str, Any] = {"memory": None, "pools": {}}
        self.anomalies: dict[str, float] = {}
        self._predicted: list[Any] = []
        self._alerted: set[str] = set()
        coord = service.coordinator

        def pid_of(agent: str) -> int | None:
            found = [a.pid for a in coord.agents() if a.agent_id == agent]
            return found[0] if found else None

        self.providers = host_providers(cfg, memory=service.master.memory,
                                        namespace=service.master.memory_namespace, pid_of=pid_of)
        self.memory = next(p for p in self.providers if isinstance(p, MemoryRemedies))
        self.hooks = [h for p in self.providers for h in service.eliminator.attach_provider(p)]

    # -- garbage collection ---------------------------------------------------------------------------------
    def collect_if_due(self) -> dict[str, Any] | None:
        """Run the periodic GC when ``gc_interval_s`` has passed (0: never); returns what it reclaimed."""
        now = self._clock()
        if self.gc_interval_s <= 0 or now < self._next_gc:
            return None
        self._next_gc = now + self.gc_interval_s
        try:
            got = self.memory.collect()
        except HwoptError as exc:  # a damaged pool must not stop the daemon's passes
            log.warning("periodic garbage collection failed: %s", exc)
            return None
        self.gc_totals["passes"] += 1
        for k in ("agents", "blocks", "pins", "released_bytes"):
            self.gc_totals[k] += int(got.get(k, 0))
        self.gc_last = {"at": time.time(), **got}
        if any(got.values()):
            log.info("periodic GC reclaimed %s", got)
        return got

    # -- prediction -----------------------------------------------------------------------------------------
    def _pool_predictions(self, now: float) -> dict[str, Any]:
        from ..profiler.predict import time_to_exhaustion
        from ..shm import list_segments

        memory = self.service.master.memory
        names = list_segments(self.service.master.memory_namespace, "pool")
        for gone in set(self._pool_history) - set(names):
            del self._pool_history[gone]
        out: dict[str, Any] = {}
        for pool_id in names:
            try:
                free = float(memory.stats(pool_id)["free"])
            except HwoptError:
                continue
            hist = self._pool_history.setdefault(pool_id, deque(maxlen=_POOL_HISTORY))
            hist.append((now, free))
            if len(hist) >= 3:
                t = np.array([h[0] for h in hist])
                f = np.array([h[1] for h in hist])
                pred = time_to_exhaustion(t, f)
                if pred is not None:
                    out[pool_id] = pred
        return out

    def predicted(self) -> list[Any]:
        """The ``memory_exhaustion_predicted`` findings of this pass (profiler Bottleneck objects).

        Runs the predictions every ``PREDICT_EVERY_S`` (pools: on every call), alerts on each new one, and
        refreshes the anomaly scores every ``anomaly_interval_s`` (with prediction off too).
        """
        from ..profiler.detect import Bottleneck

        elim = self.service.eliminator
        enabled = elim.settings.prediction_enabled
        now = self._clock()
        predicting = enabled and now >= self._next_predict
        scoring = self.anomaly_interval_s > 0 and now >= self._next_anomaly
        if predicting or scoring:
            try:
                pred = self.service.profiler.predict(_PREDICT_WINDOW, anomalies=scoring)
            except HwoptError as exc:
                log.warning("prediction failed: %s", exc)
                pred = {}
            if predicting:
                self._next_predict = now + PREDICT_EVERY_S
                self.predictions["memory"] = pred.get("memory")
            if scoring:
                self._next_anomaly = now + self.anomaly_interval_s
                self.anomalies = {a: float(s) for a, s in (pred.get("anomalies") or {}).items()}
        if not enabled:
            self._predicted = []
            return []
        pools = self._pool_predictions(now)
        self.predictions["pools"] = pools
        horizon = elim.settings.prediction_horizon_s
        found = []
        targets = [("memory", self.predictions["memory"]), *((f"pool:{p}", v) for p, v in pools.items())]
        for resource, p in targets:
            if not elim.predicted_bottlenecks({"memory": p}):
                continue
            secs = float(p["seconds"])
            severity = "critical" if secs < horizon / 8 else "high" if secs < horizon / 2 else "medium"
            found.append(Bottleneck(
                "memory_exhaustion_predicted", severity, resource,
                {"seconds_to_exhaustion": secs, "free_bytes": float(p["free"]),
                 "slope_bytes_per_s": float(p["slope_per_s"]), "r2": float(p["r2"]),
                 "horizon_s": horizon}, [],
                f"{resource} predicted exhausted in about {secs:.0f} s at the current trend (horizon "
                f"{horizon:.0f} s): low-risk remedies run now"))
        current = {b.resource for b in found}
        for b in found:
            if b.resource not in self._alerted:
                self.service.master._alert("warning", "prediction", b.message, bottleneck=b.to_dict())
        self._alerted = current
        self._predicted = found
        return found

    # -- explanation ----------------------------------------------------------------------------------------
    def annotate(self, findings: dict[str, dict[str, Any]]) -> None:
        """Write each named agent's latest IsolationForest score beside the finding (``anomaly_scores``)."""
        if not self.anomalies:
            return
        for f in findings.values():
            scores = {a: round(self.anomalies[a], 3) for a in f.get("agents") or [] if a in self.anomalies}
            if scores:
                f["anomaly_scores"] = scores

    def view(self) -> dict[str, Any]:
        """What the dashboard shows of this: predictions (with those acted on), anomaly scores, GC figures."""
        return {"memory": self.predictions["memory"], "pools": self.predictions["pools"],
                "acting_on": [b.to_dict() for b in self._predicted],
                "horizon_s": self.service.eliminator.settings.prediction_horizon_s,
                "enabled": self.service.eliminator.settings.prediction_enabled,
                "anomaly_scores": {a: round(s, 3) for a, s in self.anomalies.items()},
                "gc": {"interval_s": self.gc_interval_s, "last": self.gc_last, "totals": dict(self.gc_totals)}}

    def close(self) -> None:
        for p in self.providers:
            p.close()
