"""The host service's REST API, Prometheus endpoint and dashboard, as one Starlette application.

This is the web layer: it reads the service through its public methods and renders with :mod:`.dashboard` and
:mod:`.metrics`; the service imports none of them.

Starlette rather than aiohttp: it is a small ASGI toolkit whose apps run under uvicorn and are tested in-process
(its ``TestClient``, schemathesis' ASGI mode) without sockets; aiohttp would bring its own server and client
stack we do not need. Reads are open to the user's local processes; every mutating call (POST/DELETE) needs
``Authorization: Bearer <token>`` where the token is the one ``deploy`` wrote to the private runtime directory.
A missing or wrong token is 401, a malformed body 422, an unknown id 404, a conflict 409 — and nothing changes.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .._validate import check_agent_id
from ..errors import (
    AlreadyExistsError,
    HwoptError,
    InvalidArgumentError,
    NotFoundError,
    StateError,
    UsageError,
)
from .agent_threads import check_report
from .dashboard import plotly_js, render_dashboard
from .metrics import render as render_metrics
from .openapi import openapi_document
from .service import HostService

__all__ = ["create_app"]

_MAX_BODY = 64 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def _status_for(exc: HwoptError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, AlreadyExistsError):
        return 409
    if isinstance(exc, StateError):
        return 409
    if isinstance(exc, (InvalidArgumentError, UsageError)):
        return 422
    return 500


def create_app(service: HostService, token: str | None) -> Starlette:
    """Build the ASGI app over ``service``; ``token`` guards mutating calls (``None`` refuses them all)."""

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        return token is not None and scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)

    def mutating(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if not authorized(request):
                return _error(401, "missing or wrong bearer token (see the token file in the runtime directory)")
            return await handler(request)

        guarded.__name__ = handler.__name__
        return guarded

    async def call(fn: Callable[..., Any], *args: Any) -> Response:
        try:
            result = await run_in_threadpool(fn, *args)
        except HwoptError as exc:
            return _error(_status_for(exc), str(exc))
        return JSONResponse(result)

    async def json_body(request: Request) -> dict[str, Any] | Response:
        raw = await request.body()
        if len(raw) > _MAX_BODY:
            return _error(413, f"body larger than {_MAX_BODY} bytes")
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(422, f"body is not valid JSON: {exc}")
        if not isinstance(data, dict):
            return _error(422, f"body must be a JSON object, got {type(data).__name__}")
        return data

    async def status(request: Request) -> Response:
        return await call(service.status)

    async def metrics(request: Request) -> Response:
        return await call(service.metrics)

    async def agents(request: Request) -> Response:
        return await call(service.agents)

    async def dashboard_data(request: Request) -> Response:
        return await call(service.dashboard_data)

    async def fleet_config(request: Request) -> Response:
        return await call(service.fleet_config)

    async def bottlenecks(request: Request) -> Response:
        return await call(service.bottlenecks)

    @mutating
    async def register_agent(request: Request) -> Response:
        body = await json_body(request)
        if isinstance(body, Response):
            return body
        unknown = set(body) - {"agent_id", "pid", "requirements"}
        if unknown:
            return _error(422, f"unknown field(s): {', '.join(sorted(unknown))}; allowed: agent_id, pid, requirements")
        agent_id, pid, req = body.get("agent_id"), body.get("pid"), body.get("requirements", {})
        try:
            agent_id = check_agent_id(agent_id)
        except InvalidArgumentError as exc:
            return _error(422, str(exc))
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**22:
            return _error(422, f"pid must be a positive integer process id, got {pid!r}")
        if not isinstance(req, dict):
            return _error(422, f"requirements must be an object, got {type(req).__name__}")
        try:
            result = await run_in_threadpool(service.register_agent, agent_id, pid, req)
        except HwoptError as exc:
            return _error(_status_for(exc), str(exc))
        return JSONResponse(result, status_code=201)

    @mutating
    async def unregister_agent(request: Request) -> Response:
        return await call(service.unregister_agent, request.path_params["agent_id"])

    @mutating
    async def optimize(request: Request) -> Response:
        body = await json_body(request)
        if isinstance(body, Response):
            return body
        unknown = set(body) - {"dry_run", "strategy"}
        if unknown:
            return _error(422, f"unknown field(s): {', '.join(sorted(unknown))}; allowed: dry_run, strategy")
        dry_run = body.get("dry_run", False)
        strategy = body.get("strategy", "load_based")
        if not isinstance(dry_run, bool):
            return _error(422, f"dry_run must be a boolean, got {dry_run!r}")
        if not isinstance(strategy, str):
            return _error(422, f"strategy must be a string, got {strategy!r}")
        return await call(service.optimize, strategy, dry_run)

    @mutating
    async def eliminate(request: Request) -> Response:
        """202 at once with the job; the elimination and its validation run in the background."""
        try:
            job = await run_in_threadpool(service.eliminate, request.path_params["bottleneck_id"])
        except HwoptError as exc:
            return _error(_status_for(exc), str(exc))
        location = f"/api/jobs/{job['job_id']}"
        return JSONResponse({**job, "location": location}, status_code=202, headers={"location": location})

    @mutating
    async def report_agent(request: Request) -> Response:
        """An agent's own figures: thread-pool sizes after placement (agent_threads), optionally its p99, and its
        caches' prefetch decisions (agent_prefetch)."""
        body = await json_body(request)
        if isinstance(body, Response):
            return body
        try:
            report = check_report(body)
        except InvalidArgumentError as exc:
            return _error(422, str(exc))
        return await call(service.report_agent, request.path_params["agent_id"], report)

    async def jobs(request: Request) -> Response:
        return await call(service.jobs.all)

    async def job(request: Request) -> Response:
        return await call(service.jobs.get, request.path_params["job_id"])

    async def prometheus(request: Request) -> Response:
        figures = await run_in_threadpool(service.figures)
        body, content_type = render_metrics(figures)
        return Response(body, media_type=content_type)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(render_dashboard(None, inline_js=False))

    async def plotly_script(request: Request) -> Response:
        return Response(plotly_js(), media_type="application/javascript",
                        headers={"cache-control": "max-age=86400"})

    routes = [
        Route("/", dashboard, methods=["GET"]),
        Route("/static/plotly.min.js", plotly_script, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/api/status", status, methods=["GET"]),
        Route("/api/metrics", metrics, methods=["GET"]),
        Route("/api/config", fleet_config, methods=["GET"]),
        Route("/api/dashboard", dashboard_data, methods=["GET"]),
        Route("/api/bottlenecks", bottlenecks, methods=["GET"]),
        Route("/api/agents", agents, methods=["GET"]),
        Route("/api/agents", register_agent, methods=["POST"]),
        Route("/api/agents/{agent_id}", unregister_agent, methods=["DELETE"]),
        Route("/api/agents/{agent_id}/report", report_agent, methods=["PUT"]),
        Route("/api/optimize", optimize, methods=["POST"]),
        Route("/api/eliminate/{bottleneck_id}", eliminate, methods=["POST"]),
        Route("/api/jobs", jobs, methods=["GET"]),
        Route("/api/jobs/{job_id}", job, methods=["GET"]),
    ]

    async def server_error(request: Request, exc: Exception) -> Response:
        service.log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")

    return Starlette(routes=routes, exception_handlers={Exception: server_error})
