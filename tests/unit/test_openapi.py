"""The OpenAPI document of the orchestrator's API: valid OpenAPI 3.1, committed as generated, and it lists what
the application serves (every route, its role, its models)."""

import json
from typing import Any

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.versions import consts, get_spec_version

from orchestrator import openapi
from orchestrator.api import make_api_app
from orchestrator.api_auth import role_for_method
from orchestrator.api_routes import ROUTES
from orchestrator.runner import Runner

pytestmark = pytest.mark.unit

DOC: dict[str, Any] = openapi.document()


def test_it_is_valid_openapi_3_1() -> None:
    assert get_spec_version(DOC) == consts.OPENAPIV31
    validate(DOC)


def test_the_committed_document_is_the_generated_one() -> None:
    assert json.loads(openapi.DOC_PATH.read_text()) == DOC, f"docs/openapi.json is stale: {openapi.REGENERATE}"
    assert openapi.main(["--check"]) == 0


def test_every_route_the_app_serves_is_documented_and_nothing_else(workflow) -> None:
    app = make_api_app(lambda: None, Runner(workflow))
    served = {(r.method, r.resource.canonical) for r in app.router.routes()}
    # The web console's HTML pages (orchestrator/console/, docs/console.md) are no part of the JSON API.
    served = {(method, path) for method, path in served if not path.startswith("/console")}
    documented = {(method.upper(), path) for path, ops in DOC["paths"].items() for method in ops}
    assert served == documented


def test_roles_and_public_paths() -> None:
    for route in ROUTES:
        op = DOC["paths"][route.path][route.method.lower()]
        if route.public:
            assert op["security"] == [] and "401" not in op["responses"]
        else:
            assert op["x-required-role"] == role_for_method(route.method)
            assert {"401", "403"} <= op["responses"].keys()
    assert DOC["paths"]["/api/v1/sagas/{orderId}/redrive"]["post"]["x-required-role"] == "operator"
    assert DOC["paths"]["/api/v1/sagas"]["get"]["x-required-role"] == "viewer"


def test_problems_and_models_are_referenced() -> None:
    schemas = DOC["components"]["schemas"]
    assert {"SagaPage", "SagaDetail", "RedriveResult", "BulkRedriveRequest", "Problem"} <= schemas.keys()
    listing = DOC["paths"]["/api/v1/sagas"]["get"]
    names = {p["name"] for p in listing["parameters"]}
    assert {"status", "step", "error", "product", "q", "createdFrom", "updatedTo", "limit", "cursor"} <= names
    status = next(p for p in listing["parameters"] if p["name"] == "status")
    assert status["schema"]["type"] == "array" and "FAILED_CRITICAL" in status["schema"]["items"]["enum"]
    conflict = DOC["paths"]["/api/v1/sagas/{orderId}/redrive"]["post"]["responses"]["409"]
    assert conflict["content"]["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}


@pytest.fixture
def workflow():
    from orchestrator import definition

    return definition.load(definition.DEFINITION_FILE)
