"""Schemathesis drives every operation of the daemon's own OpenAPI description: no input makes a server error.

Positive examples register only a ``sleep`` child of this test (the document's ``pid`` is narrowed to it), so
generated placements never touch other processes of the machine; negative examples run on every operation
except registration, whose malformed bodies ``test_api.py`` covers one by one.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import tempfile

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from sutazai_hwopt.config import load_config
from sutazai_hwopt.host.api import create_app
from sutazai_hwopt.host.openapi import openapi_document
from sutazai_hwopt.host.service import HostService

TOKEN = "schemathesis-token"
_STATE = tempfile.mkdtemp(prefix="hwopt-schemathesis-")
_SLEEPER = subprocess.Popen(["sleep", "600"])
_SERVICE = HostService(load_config(mode="conservative"), state_dir=_STATE)
_SERVICE.establish_baseline()
APP = create_app(_SERVICE, TOKEN)


def _document() -> dict:  # type: ignore[type-arg]
    doc = copy.deepcopy(openapi_document())
    doc["components"]["schemas"]["AgentRegistration"]["properties"]["pid"] = {"type": "integer",
                                                                             "enum": [_SLEEPER.pid]}
    return doc


def _schema(modes: list[GenerationMode]) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_dict(_document())
    schema.app = APP
    schema.config.generation.update(modes=modes)
    return schema


positive = _schema([GenerationMode.POSITIVE])
negative = (_schema([GenerationMode.NEGATIVE]).include(method=["POST", "PUT", "DELETE"])  # the operations with inputs
            .exclude(method="POST", path="/api/agents"))


def teardown_module() -> None:
    # schemathesis runs ASGI apps on one event-loop thread it keeps until exit; stop it now, so later tests
    # (which fork) do not run beside a leftover loop thread (no public call exists; its atexit hook is this)
    try:
        from schemathesis.python import asgi
    except ImportError:
        pass
    else:
        getattr(asgi, "_shutdown", lambda: None)()
    _SERVICE.close(rollback=True)
    _SLEEPER.kill()
    _SLEEPER.wait()
    shutil.rmtree(_STATE, ignore_errors=True)


def _check(case: schemathesis.Case) -> None:
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {}):
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text)
    assert _SERVICE.status()["running"] is True


@positive.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_valid_input_never_causes_a_server_error(case: schemathesis.Case) -> None:
    """Every schema-valid request, with and without the token, is answered below 500."""
    _check(case)


@negative.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_invalid_input_never_causes_a_server_error(case: schemathesis.Case) -> None:
    """Every schema-violating request, with and without the token, is answered below 500."""
    _check(case)
