"""Manual eliminations as background jobs, and the stable ids an operator posts them by.

``POST /api/eliminate/{id}`` is the operator's consent to act on one finding. The elimination itself takes
seconds (a validation window before and after each action), longer than an HTTP client waits, so the request
only queues a job and answers at once; ``GET /api/jobs/{job_id}`` then gives its state and, when done, the
validation outcome. One worker thread runs the jobs in order, outside the service lock (the validation windows
are measured from the sampler's own passes, which must keep running meanwhile).

Bottleneck ids are derived from what a finding is about — its type, resource and agents — not from when it was
seen, so an id read from the dashboard names the same finding in the next pass; a finding that left the
latest pass stays postable for :data:`RECENT_S` seconds. Findings whose agents have all been unregistered (or
died) are dropped, not acted on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .._validate import finite
from ..errors import HwoptError, NotFoundError, StateError

__all__ = ["RECENT_S", "EliminationJobs", "bottleneck_id", "without_agents"]

#: A finding no longer in the latest pass can still be posted for this long (the dashboard polls every 2 s;
#: a finding near its threshold flickers in and out).
RECENT_S = 60.0
#: Finished jobs kept for ``GET /api/jobs`` (the oldest are forgotten first).
KEEP_JOBS = 100
#: While the auto-fix worker holds the eliminator, a job waits and retries this often.
_BUSY_RETRY_S = 0.2

#: The states a job goes through: queued -> running -> done | failed | dropped.
JOB_STATES = ("queued", "running", "done", "failed", "dropped")


def bottleneck_id(finding: Mapping[str, Any]) -> str:
    """The stable id of a finding: a short hash of its type, resource and (sorted) agents."""
    key = json.dumps([finding.get("type"), finding.get("resource"), sorted(finding.get("agents") or [])])
    return hashlib.blake2s(key.encode(), digest_size=6).hexdigest()


def without_agents(findings: Mapping[str, dict[str, Any]], registered: Collection[str]) -> dict[str, dict[str, Any]]:
    """``findings`` minus those about agents that are all gone; the rest keep only their registered agents.

    A finding that never named agents (host-wide) is kept as it is. Ids are not recomputed: the operator's id
    keeps naming the finding.
    """
    out = {}
    for bid, f in findings.items():
        agents = list(f.get("agents") or [])
        if not agents:
            out[bid] = f
            continue
        alive = [a for a in agents if a in registered]
        if alive:
            out[bid] = f if len(alive) == len(agents) else {**f, "agents": alive}
    return out


class DroppedError(HwoptError):
    """A job's finding is about agents that are gone; nothing was applied (internal to the job runner)."""


class EliminationJobs:
    """Queue, run and remember manual eliminations.

    Args:
        run: ``run(bottleneck_id, finding) -> result dict``; called on the worker thread. It raises
            :class:`DroppedError` when the finding's agents are gone, :class:`StateError` while another
            elimination holds the eliminator (the job then waits and retries), any other :class:`HwoptError`
            when the elimination failed.
        clock: wall clock of the job records.
        log: where failures are logged.
    """

    def __init__(self, run: Callable[[str, dict[str, Any]], dict[str, Any]], *,
                 clock: Callable[[], float] = time.time, log: logging.Logger | None = None,
                 busy_timeout_s: float = 300.0) -> None:
        self._run = run
        self._clock = clock
        self._log = log or logging.getLogger(__name__)
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._recent: dict[str, tuple[float, dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._closed = False

    # -- findings an operator may post ---------------------------------------------------------------------
    def remember(self, findings: Mapping[str, dict[str, Any]]) -> None:
        """Note the findings of the latest pass (so their ids stay postable for :data:`RECENT_S`)."""
        now = time.monotonic()
        with self._lock:
            for bid, f in findings.items():
                self._recent[bid] = (now, f)
            for bid in [b for b, (t, _) in self._recent.items() if now - t > RECENT_S]:
                del self._recent[bid]

    def forget_agents(self, registered: Collection[str]) -> None:
        """Drop remembered findings whose agents are all gone (they must not be acted on)."""
        with self._lock:
            kept = without_agents({b: f for b, (_, f) in self._recent.items()}, registered)
            self._recent = {b: (self._recent[b][0], f) for b, f in kept.items()}

    def recent(self, bid: str) -> dict[str, Any] | None:
        """A finding seen within :data:`RECENT_S` under ``bid``, or None."""
        with self._lock:
            hit = self._recent.get(bid)
        if hit is None or time.monotonic() - hit[0] > RECENT_S:
            return None
        return hit[1]

    # -- jobs ----------------------------------------------------------------------------------------------
    def submit(self, bid: str, finding: dict[str, Any]) -> dict[str, Any]:
        """Queue one elimination; returns the job record (state ``queued``) at once."""
        with self._lock:
            if self._closed:
                raise StateError("the host service is stopped")
            job_id = f"job-{next(self._ids)}-{bid}"
            job = {"job_id": job_id, "bottleneck_id": bid, "type": finding.get("type"),
                   "agents": list(finding.get("agents") or []), "state": "queued", "submitted_at": self._clock(),
                   "started_at": None, "finished_at": None, "result": None, "validation": None, "error": None,
                   "_finding": finding}
            self._jobs[job_id] = job
            while len(self._jobs) > KEEP_JOBS:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest]["state"] in ("queued", "running"):
                    break
                del self._jobs[oldest]
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name="hwopt-elimination-jobs", daemon=True)
                self._worker.start()
            self._queue.put(job_id)
            return self._public(job)

    def get(self, job_id: str) -> dict[str, Any]:
        """One job's record. Raises :class:`NotFoundError` for an unknown (or forgotten) id."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFoundError(f"unknown job id {job_id!r}; GET /api/jobs lists them")
            return self._public(job)

    def all(self) -> list[dict[str, Any]]:
        """Every job still remembered, oldest first."""
        with self._lock:
            return [self._public(j) for j in self._jobs.values()]

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        """Block until the job finishes or ``timeout`` passes; returns its record (for tests and scripts)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job["state"] not in ("queued", "running") or time.monotonic() >= deadline:
                return job
            time.sleep(0.02)

    def close(self) -> None:
        """Stop taking jobs and let the worker finish the one it runs (queued ones are marked failed)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
        self._queue.put(None)
        if worker is not None:
            worker.join(timeout=60)

    @staticmethod
    def _public(job: dict[str, Any]) -> dict[str, Any]:
        return finite({k: v for k, v in job.items() if not k.startswith("_")})

    def _update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            job = self._jobs[job_id]
            job.update(fields)
            return job

    def _loop(self) -> None:
        while (job_id := self._queue.get()) is not None:
            with self._lock:
                job = self._jobs.get(job_id)
                closed = self._closed
            if job is None:
                continue
            if closed:
                self._update(job_id, state="failed", error="the host service stopped", finished_at=self._clock())
                continue
            self._update(job_id, state="running", started_at=self._clock())
            self._execute(job_id, job["bottleneck_id"], job["_finding"])
        while not self._queue.empty():  # stopped: what is still queued will not run
            left = self._queue.get_nowait()
            if left is not None and left in self._jobs:
                self._update(left, state="failed", error="the host service stopped", finished_at=self._clock())

    def _execute(self, job_id: str, bid: str, finding: dict[str, Any]) -> None:
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                result = self._run(bid, finding)
            except DroppedError as exc:
                self._update(job_id, state="dropped", error=str(exc), finished_at=self._clock())
                return
            except StateError as exc:
                if "in progress" in str(exc) and time.monotonic() < deadline and not self._closed:
                    time.sleep(_BUSY_RETRY_S)  # the auto-fix worker holds the eliminator: wait for it
                    continue
                self._fail(job_id, bid, exc)
                return
            except HwoptError as exc:
                self._fail(job_id, bid, exc)
                return
            except Exception as exc:  # keep the worker alive; the traceback goes to the log
                self._log.exception("elimination job %s failed", job_id)
                self._fail(job_id, bid, exc)
                return
            break
        self._update(job_id, state="done", result=result, validation=_validation(result),
                     finished_at=self._clock())

    def _fail(self, job_id: str, bid: str, exc: Exception) -> None:
        self._log.warning("elimination job %s (bottleneck %s) failed: %s", job_id, bid, exc)
        self._update(job_id, state="failed", error=f"{type(exc).__name__}: {exc}", finished_at=self._clock())


def _validation(result: Mapping[str, Any]) -> dict[str, Any]:
    """The validation outcome in brief: the elimination's status and each tried action's decision."""
    tried = [{"action": o.get("action", {}).get("name") if isinstance(o.get("action"), Mapping) else o.get("action"),
              "decision": o.get("decision"), "reason": o.get("reason")}
             for o in result.get("outcomes") or [] if o.get("decision") != "recommended"]
    return {"status": result.get("status"), "kept": any(t["decision"] == "kept" for t in tried), "tried": tried}
