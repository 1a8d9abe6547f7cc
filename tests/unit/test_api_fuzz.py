"""Property-based API testing with schemathesis against the app's own OpenAPI schema.

Every operation is called with generated valid and invalid requests (the
token is sent, so the write paths are reached; unit tests cover auth).
Checked for every response: no 5xx, status code, content type, headers and
body as documented, and -- after every call -- the config file on disk equals
the controller's config in memory (no partial write).

Not checked: ``positive_data_acceptance``, because a body valid for the schema
may still be refused for reasons JSON Schema cannot express (unknown parent,
children's rates over the parent's ceil) with a documented 422.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_api import BASE, TOKEN, make_controller

from imqd.api import create_app
from imqd.config import load_config

_tmp = tempfile.TemporaryDirectory(prefix="imqd-fuzz-")
controller, workers, config_path = make_controller(Path(_tmp.name), BASE)
app = create_app(controller, token=TOKEN, open_reads=False)
# The event stream never ends on its own (test_dashboard.py reads it with once=1)
schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/stats/stream")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, ignored_auth]


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> object:
    yield
    controller.close()  # its background writer first, then the files
    _tmp.cleanup()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    response = case.call(headers=AUTH)
    case.validate_response(response, checks=CHECKS, headers=AUTH)
    if config_path.exists():
        assert load_config(config_path) == controller.config, "file on disk differs from memory"
