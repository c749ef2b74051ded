"""schemathesis against the service's own OpenAPI schema, in process (ASGI): requests generated
from the schema, valid and invalid, to every operation; no answer is a 5xx and every answer
matches the schema (documented status code, content type, body). Stand-in models
(tests/test_serve_api.py) keep it fast; the real models are covered by tests/test_serve_api.py
and tests/test_browser.py.

(schemathesis' own pytest plugin, ``from_fixture``, does not run under pytest 9, so each
operation is a parametrized test that draws its cases with hypothesis.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_serve_api import RED, TOKEN, enroll, make_client, photo

from tripletkit.serve.app import ServeConfig, create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PATHS = create_app(ServeConfig()).openapi()["paths"]
EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 30}


def _can_be_invalid(spec: dict[str, Any]) -> bool:
    """Whether an operation takes a body or a parameter that some value breaks (a path
    parameter that is any string, like a person's name, takes every value)."""
    plain = {"type", "title", "description"}
    return "requestBody" in spec or any(
        set(p.get("schema", {})) - plain or p["in"] != "path" for p in spec.get("parameters", [])
    )


CASES = [
    (method.upper(), path, mode)
    for path, methods in PATHS.items()
    for method, spec in methods.items()
    for mode in EXAMPLES
    if mode is GenerationMode.POSITIVE or _can_be_invalid(spec)
]


@pytest.fixture
def api_schema(tmp_path: Path) -> Iterator[Any]:
    """The schema of an app with stand-in models, a token, and one person ("Red") enrolled.

    One app per test: schemathesis starts the app's lifespan on the first request and ends it
    after the test, which closes the app's services."""
    client = make_client(tmp_path, token=TOKEN, allowed_hosts=("testserver", "127.0.0.1"))
    assert enroll(client, "Red", photo(RED), headers=AUTH).status_code == 201
    yield schemathesis.openapi.from_asgi("/openapi.json", client.app)


def test_every_operation_is_generated() -> None:
    assert sum(len(methods) for methods in PATHS.values()) == 12
    assert len({(method, path) for method, path, _ in CASES}) == 12


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_generated_requests_get_no_5xx_and_match_the_schema(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    """Half the cases carry the token, so the writes get past the 401 too."""
    operation = api_schema[path][method]

    @settings(max_examples=EXAMPLES[mode], deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), token=st.booleans())
    def check(case: schemathesis.Case, token: bool) -> None:
        response = case.call(headers=AUTH if token else None)
        case.validate_response(response, checks=CHECKS)

    check()
