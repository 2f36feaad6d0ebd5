"""The OpenAPI 3.0 description of the host service's API (served at ``/openapi.json``).

Written out by hand, next to the routes in ``api.py``, so the contract is explicit and a schemathesis run can
check the server against it.
"""

from __future__ import annotations

from typing import Any

from .._version import __version__

__all__ = ["openapi_document"]

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_OBJ = {"application/json": {"schema": {"type": "object"}}}


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _prefetch_rows() -> dict[str, Any]:
    """The ``prefetch`` field of a report, as ``agent_prefetch.check_prefetch`` accepts it."""
    from ..cache.prefetch import OFF, ON, REASON_CODES, TRIAL
    from .agent_prefetch import PREFETCH_FIELDS

    def text(limit: int) -> dict[str, Any]:
        return {"type": "string", "maxLength": limit, "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"}

    fraction = {"type": "number", "minimum": 0, "maximum": 1}
    count = {"type": "integer", "minimum": 0, "maximum": (1 << 63) - 1}
    return {"type": "array", "maxItems": 64, "description": "one row per cache of the agent's process with "
            "prefetching: the governor's decision and the figures behind it (cache names distinct)",
            "items": {"type": "object", "additionalProperties": False, "required": list(PREFETCH_FIELDS),
                      "properties": {"cache": {**text(128), "minLength": 1}, "mode": text(32),
                                     "state": {"type": "string", "enum": [OFF, TRIAL, ON]},
                                     "reason_code": {"type": "string", "enum": list(REASON_CODES)},
                                     "reason": text(300), "precision": fraction, "coverage": fraction,
                                     "prefetched": count, "used": count, "requests": count, "switches": count}}}


def openapi_document() -> dict[str, Any]:
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "sutazai_hwopt host service", "version": __version__,
                 "description": "Host service of sutazai_hwopt. Mutating calls need the bearer token that "
                                "`sutazai-hwopt deploy` wrote to the private runtime directory."},
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "status"],
                          "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
                "AgentRegistration": {
                    "type": "object", "required": ["agent_id", "pid"], "additionalProperties": False,
                    "properties": {
                        "agent_id": {"type": "string", "minLength": 1, "maxLength": 128},
                        "pid": {"type": "integer", "minimum": 1},
                        "requirements": {
                            "type": "object",
                            "properties": {"cpu_cores": {"type": "number", "minimum": 0},
                                           "memory_mb": {"type": "integer", "minimum": 0},
                                           "priority": {"type": "integer", "minimum": 0, "maximum": 10},
                                           "gpu_memory_mb": {"type": "integer", "minimum": 0}},
                        },
                    },
                },
                "Job": {
                    "type": "object", "required": ["job_id", "bottleneck_id", "state"],
                    "properties": {
                        "job_id": {"type": "string"}, "bottleneck_id": {"type": "string"},
                        "type": {"type": "string", "nullable": True},
                        "agents": {"type": "array", "items": {"type": "string"}},
                        "state": {"type": "string", "enum": ["queued", "running", "done", "failed", "dropped"]},
                        "submitted_at": {"type": "number"},
                        "started_at": {"type": "number", "nullable": True},
                        "finished_at": {"type": "number", "nullable": True},
                        "result": {"type": "object", "nullable": True,
                                   "description": "the eliminator's result (status, outcomes) when done"},
                        "validation": {"type": "object", "nullable": True,
                                       "description": "status, kept, and each tried action's decision"},
                        "error": {"type": "string", "nullable": True},
                        "location": {"type": "string"},
                    },
                },
                "AgentReport": {
                    "type": "object", "additionalProperties": False,
                    "description": "What an agent reports about itself; fields not given keep their last value.",
                    "properties": {
                        "cpus": {"type": "array", "maxItems": 4096,
                                 "items": {"type": "integer", "minimum": 0, "maximum": 4095}},
                        "thread_pools": {"type": "array", "maxItems": 64, "items": {
                            "type": "object", "additionalProperties": False, "required": ["num_threads"],
                            "properties": {"user_api": {"type": "string", "maxLength": 128},
                                           "internal_api": {"type": "string", "maxLength": 128},
                                           "prefix": {"type": "string", "maxLength": 128},
                                           "num_threads": {"type": "integer", "minimum": 0, "maximum": 65536}}}},
                        "p99_ms": {"type": "number", "minimum": 0, "nullable": True},
                        "prefetch": _prefetch_rows(),
                    },
                },
                "OptimizeRequest": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"dry_run": {"type": "boolean"},
                                   "strategy": {"type": "string", "enum": ["load_based", "priority", "numa"]}},
                },
            },
        },
        "paths": {
            "/api/status": {"get": {"summary": "Is the host service running; mode, uptime, agents, services",
                                    "responses": {"200": _ok("status")}}},
            "/api/metrics": {"get": {"summary": "Latest host and per-agent metrics",
                                     "responses": {"200": _ok("metrics")}}},
            "/api/config": {"get": {"summary": "The namespace's configuration as the daemon resolved it (mode, "
                                               "files, flags), with the shared tiers and pools it owns",
                                    "responses": {"200": _ok("configuration")}}},
            "/api/dashboard": {"get": {"summary": "Everything the dashboard draws, in one object",
                                       "responses": {"200": _ok("dashboard data")}}},
            "/api/bottlenecks": {"get": {"summary": "Bottlenecks detected in the latest pass, by id",
                                         "responses": {"200": _ok("bottlenecks")}}},
            "/api/agents": {
                "get": {"summary": "Registered agents with their placement",
                        "responses": {"200": _ok("agents", {"type": "array", "items": {"type": "object"}})}},
                "post": {"summary": "Register an agent process", "security": secured,
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/AgentRegistration"}}}},
                         "responses": {"201": _ok("registered"), "401": _ERROR, "404": _ERROR, "409": _ERROR,
                                       "422": _ERROR}},
            },
            "/api/agents/{agent_id}": {
                "delete": {"summary": "Unregister an agent and restore its process's settings",
                           "security": secured,
                           "parameters": [{"name": "agent_id", "in": "path", "required": True,
                                           "schema": {"type": "string"}}],
                           "responses": {"200": _ok("unregistered"), "401": _ERROR, "404": _ERROR}},
            },
            "/api/agents/{agent_id}/report": {
                "put": {"summary": "An agent's report: its thread-pool sizes after placement, optionally its p99, its "
                                   "caches' prefetch decisions",
                        "security": secured,
                        "parameters": [{"name": "agent_id", "in": "path", "required": True,
                                        "schema": {"type": "string"}}],
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/AgentReport"}}}},
                        "responses": {"200": _ok("the agent's report as kept"), "401": _ERROR, "404": _ERROR,
                                      "422": _ERROR}},
            },
            "/api/optimize": {
                "post": {"summary": "One optimization pass: placement plus bottleneck detection",
                         "security": secured,
                         "requestBody": {"required": False, "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/OptimizeRequest"}}}},
                         "responses": {"200": _ok("actions taken or recommended"), "401": _ERROR,
                                       "422": _ERROR}},
            },
            "/api/eliminate/{bottleneck_id}": {
                "post": {"summary": "Eliminate one detected bottleneck (an id from /api/bottlenecks), with consent",
                         "description": "The operator's consent: the actions the mode's risk level allows are "
                                        "applied even without auto_fix. Answers at once with a job (202, "
                                        "Location header); GET /api/jobs/{job_id} gives its progress and "
                                        "validation outcome. Ids are stable across passes (type, resource, "
                                        "agents); an unknown id is 404.",
                         "security": secured,
                         "parameters": [{"name": "bottleneck_id", "in": "path", "required": True,
                                         "schema": {"type": "string"}}],
                         "responses": {"202": _ok("job queued", {"$ref": "#/components/schemas/Job"}),
                                       "401": _ERROR, "404": _ERROR, "409": _ERROR}},
            },
            "/api/jobs": {"get": {"summary": "Elimination jobs still remembered, oldest first",
                                  "responses": {"200": _ok("jobs", {"type": "array", "items": {
                                      "$ref": "#/components/schemas/Job"}})}}},
            "/api/jobs/{job_id}": {
                "get": {"summary": "One elimination job: state, and when done the validation outcome",
                        "parameters": [{"name": "job_id", "in": "path", "required": True,
                                        "schema": {"type": "string"}}],
                        "responses": {"200": _ok("job", {"$ref": "#/components/schemas/Job"}), "404": _ERROR}},
            },
            "/metrics": {"get": {"summary": "Prometheus exposition format",
                                 "responses": {"200": {"description": "metrics",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
    }
