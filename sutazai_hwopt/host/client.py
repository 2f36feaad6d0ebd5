"""How agents and the CLI talk to the host service: find it through the runtime directory, call its API.

Standard-library HTTP only (``urllib``), so an agent that embeds the library needs no server extra to register.
:func:`connect` registers an agent; :func:`fleet_config` gives any process the configuration the daemon
resolved for its namespace (``GET /api/config``, no token needed), so one place configures the fleet.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from ..errors import AccessDeniedError, HwoptError, NotFoundError, StateError
from .runtime import RuntimeDir

if TYPE_CHECKING:
    from ..config import HwoptConfig

__all__ = ["HostClient", "connect", "fleet_config"]


class HostClient:
    """A small client of the host service's REST API (reads the endpoint and token from the runtime directory)."""

    def __init__(self, runtime_dir: str | os.PathLike[str] | None = None, *, timeout: float = 10.0) -> None:
        self.runtime = RuntimeDir(runtime_dir)
        self.timeout = timeout
        endpoint = self.runtime.read_endpoint() if self.runtime.running() else None
        if endpoint is None:
            raise StateError(f"no host service is running (runtime directory {self.runtime.path}); "
                             "start one with `sutazai-hwopt deploy`")
        self.url = str(endpoint["url"]).rstrip("/")
        self.token = self.runtime.read_token()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("content-type", "application/json")
        if self.token and method != "GET":
            req.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                ctype = resp.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except ValueError:
                pass
            cls: type[HwoptError] = {401: AccessDeniedError, 404: NotFoundError}.get(exc.code, HwoptError)
            raise cls(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except OSError as exc:
            raise StateError(f"host service at {self.url} is unreachable: {exc}") from None
        return json.loads(raw) if "json" in ctype else raw.decode()

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, {} if body is None else body)

    def config(self) -> HwoptConfig:
        """The configuration the daemon serves for its namespace (see :func:`fleet_config`)."""
        from ..config import HwoptConfig

        data = self.get("/api/config")
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise HwoptError(f"GET /api/config at {self.url}: unexpected answer {data!r:.200}")
        config = HwoptConfig.from_dict(data["config"])
        _follow_l1_budget(data)
        return config

    def eliminate(self, bottleneck_id: str, *, wait_s: float = 120.0, poll_s: float = 0.5) -> dict[str, Any]:
        """Ask the host service to eliminate one bottleneck and wait for its job (at most ``wait_s``).

        Every request stays within the client's ``timeout``: ``POST /api/eliminate`` answers at once with a
        job, which is then polled. Returns the job record (``state``, ``validation``, ``result``); a job still
        running after ``wait_s`` is returned as it stands.
        """
        job: dict[str, Any] = self.post(f"/api/eliminate/{urllib.parse.quote(bottleneck_id, safe='')}")
        deadline = time.monotonic() + wait_s
        while job.get("state") in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(poll_s)
            job = self.get(f"/api/jobs/{urllib.parse.quote(str(job['job_id']), safe='')}")
        return job


def _follow_l1_budget(served: dict[str, Any]) -> None:
    """This process took the daemon's configuration: let the daemon's L1 factor scale its caches' L1 too
    (:mod:`sutazai_hwopt.cache.l1_budget`; a daemon that owns no namespace publishes none)."""
    namespace = served.get("namespace")
    if isinstance(namespace, str) and served.get("l1_budget") is not None:
        from ..cache.l1_budget import follow

        follow(namespace)


def connect(agent_id: str, requirements: dict[str, Any] | None = None, *, pid: int | None = None,
            runtime_dir: str | os.PathLike[str] | None = None, limit_threads: bool = True,
            report_prefetch: bool = True) -> dict[str, Any]:
    """Register this process (or ``pid``) with the host service in one call.

    Returns the agent record the host service keeps (placement included), with ``"config"``: the namespace's
    configuration as the daemon serves it (``GET /api/config``; :func:`fleet_config` returns it as an
    :class:`~sutazai_hwopt.config.HwoptConfig` to build this agent's cache and pools from). With
    ``limit_threads`` (and no other ``pid``) this process's BLAS/OpenMP thread pools are kept at the size of
    the CPUs it is placed on, and their sizes are reported to the host service (:mod:`.agent_threads`). With
    ``report_prefetch`` (and no other ``pid``) the prefetch decisions of this process's caches are reported on
    each change, from a background thread (:mod:`.agent_prefetch`), for the dashboard and ``/metrics``.
    The caches of the namespace this process builds follow the daemon's L1 budget factor (``cache.shrink``;
    :mod:`sutazai_hwopt.cache.l1_budget`).

    Raises:
        StateError: no host service runs. AccessDeniedError: the token file is missing or wrong.
        AlreadyExistsError-like HTTP 409 and validation errors arrive as :class:`HwoptError` with the message.
    """
    client = HostClient(runtime_dir)
    result: dict[str, Any] = client.post("/api/agents", {"agent_id": agent_id, "pid": pid or os.getpid(),
                                                         "requirements": requirements or {}})
    served = client.get("/api/config")
    result["config"] = served["config"]
    _follow_l1_budget(served)
    own = pid is None or pid == os.getpid()
    if limit_threads and own:
        from .agent_threads import govern_threads

        govern_threads(agent_id, lambda path, body: client.request("PUT", path, body))
    if report_prefetch and own:
        from .agent_prefetch import report_prefetch_state
        from .agent_threads import report_path

        path = report_path(agent_id)
        report_prefetch_state(agent_id, lambda body: client.request("PUT", path, body))
    return result


def fleet_config(runtime_dir: str | os.PathLike[str] | None = None) -> HwoptConfig:
    """The configuration the running host service resolved for its namespace (mode, files, deploy flags).

    Build this process's parts from it and they match the fleet: ``IntelligentCacheSystem(cfg)`` gets the
    daemon's L1 size, prefetching and codec and attaches the tiers it created; ``MemoryPoolManager(
    cfg.cache.namespace, config=cfg)`` its pools. Only reads: no token is needed. ``cache.redis_hmac_key`` is
    never served (null): a process that uses Redis keeps its own key. From then on the L1 of every cache of
    the namespace in this process follows the daemon's L1 budget factor, which its ``cache.shrink`` remedy
    lowers and its undo restores (:mod:`sutazai_hwopt.cache.l1_budget`).

    Raises:
        StateError: no host service runs (then build the configuration yourself, as without a daemon).
    """
    return HostClient(runtime_dir).config()
