"""The OpenAPI 3.1 document of the orchestrator's API, generated from its route table and models.

``python -m orchestrator.openapi --write`` writes docs/openapi.json; ``--check`` fails when the committed copy
differs from what the code generates (scripts/test runs it); with neither it prints the document. The
orchestrator serves the same document at GET /api/v1/openapi.json. Schemas are the pydantic models' JSON
Schemas (2020-12, OpenAPI 3.1's dialect) under components/schemas.
"""

import argparse
import difflib
import json
import re
import sys
from http import HTTPStatus
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from orchestrator.api_models import Problem
from orchestrator.api_routes import ORDER_ID, ROUTES, ApiRoute
from orchestrator.problems import PROBLEM_JSON

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
REGENERATE = "python -m orchestrator.openapi --write"
_PARAM = re.compile(r"\{(\w+)\}")
_REF = "#/components/schemas/{model}"
#: Problems every authenticated route may answer, and what each means here.
_COMMON_ERRORS = {
    401: "No bearer token, or one that is malformed, unknown or revoked.",
    403: "The token's role may not do this (a viewer that posts).",
    503: "The orchestrator is starting: try again (Retry-After).",
}
_ERROR_TEXT = {
    400: "A parameter or the body is invalid: the problem's errors name each.",
    404: "No saga for that order id.",
    409: "The saga's status allows no such action: the problem's sagaStatus and detail say why.",
    422: "The request is well-formed but asks for too much (a refund above what remains) or reuses an "
    "Idempotency-Key for another request: the problem's detail says which.",
}

DESCRIPTION = """\
The orchestrator's API for operators and the console (issue 17): find sagas by status, step, error, product, \
time or order id, read one saga with its steps, attempts and history, redrive failed sagas, and refund \
orders (customer service's manual refund).

Every route but this document needs `Authorization: Bearer <token>` (`orderctl token create --role viewer|operator`). \
A viewer reads; an operator also redrives and refunds. Errors are RFC 9457 problem details \
(`application/problem+json`). docs/api.md explains filters, pages and the audit entries."""


def _schemas() -> tuple[dict[tuple[type[BaseModel], str], Any], dict[str, Any]]:
    used: list[tuple[type[BaseModel], Any]] = [(Problem, "serialization")]
    for route in ROUTES:
        if route.body is not None:
            used.append((route.body, "validation"))
        if route.response is not None:
            used.append((route.response, "serialization"))
    refs, definitions = models_json_schema(used, ref_template=_REF)
    return refs, _without_open_objects(definitions.get("$defs", {}))


def _without_open_objects(schema: Any) -> Any:
    """``schema`` without ``"additionalProperties": true``: it is JSON Schema's default, and pydantic writes it
    for ``dict[str, Any]`` only from 2.7 on, so the document would depend on the installed pydantic."""
    if isinstance(schema, dict):
        return {k: _without_open_objects(v) for k, v in schema.items() if (k, v) != ("additionalProperties", True)}
    if isinstance(schema, list):
        return [_without_open_objects(v) for v in schema]
    return schema


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Each field of a query model as a query parameter; an optional one's null branch is its absence."""
    schema = model.model_json_schema(ref_template=_REF)
    parameters = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        branches = [b for b in prop.pop("anyOf", []) if b != {"type": "null"}]
        if len(branches) == 1:
            prop.update(branches[0])
        prop.pop("title", None)
        if prop.get("default", ...) is None:
            del prop["default"]
        description = prop.pop("description", None)
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": prop}
        if description:
            parameter["description"] = description
        if prop.get("type") == "array":
            parameter["style"], parameter["explode"] = "form", True
        parameters.append(parameter)
    return parameters


def _problem(text: str) -> dict[str, Any]:
    return {"description": text, "content": {PROBLEM_JSON: {"schema": {"$ref": _REF.format(model="Problem")}}}}


def _operation(route: ApiRoute, refs: dict[tuple[type[BaseModel], str], Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary, "tags": [route.tag]}
    if route.description:
        op["description"] = route.description
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": ORDER_ID}
        for name in _PARAM.findall(route.path)
    ]
    if route.query is not None:
        parameters += _query_parameters(route.query)
    if parameters:
        op["parameters"] = parameters
    if route.body is not None:
        op["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
        }
    body = refs[(route.response, "serialization")] if route.response is not None else {"type": "object"}
    op["responses"] = {
        str(ok): {"description": HTTPStatus(ok).phrase, "content": {"application/json": {"schema": body}}}
        for ok in route.ok_statuses
    }
    errors = dict.fromkeys(route.errors)
    if route.public:
        op["security"] = []
    else:
        op["x-required-role"] = route.role
        errors.update(dict.fromkeys(_COMMON_ERRORS))
    for status in sorted(errors):
        op["responses"][str(status)] = _problem(_ERROR_TEXT.get(status) or _COMMON_ERRORS[status])
    return op


def document() -> dict[str, Any]:
    refs, definitions = _schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Orderflow orchestrator API", "version": "1", "description": DESCRIPTION},
        "servers": [{"url": "/", "description": "The orchestrator's API port (API_PORT, 8080)"}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": "sagas", "description": "Sagas: find, read, redrive, refund."},
            {"name": "legacy", "description": "The first API (GET /orders/{order_id})."},
            {"name": "meta", "description": "This document."},
        ],
        "paths": paths,
        "components": {
            "schemas": definitions,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `orderctl token create`, or, where OIDC_ISSUER is set, a JWT "
                    "from that issuer (docs/security.md); its role is viewer or operator.",
                }
            },
        },
    }


def render() -> str:
    return json.dumps(document(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {DOC_PATH.name} under docs/")
    mode.add_argument("--check", action="store_true", help="exit 1 when docs/openapi.json is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        DOC_PATH.write_text(text)
        return 0
    if args.check:
        committed = DOC_PATH.read_text() if DOC_PATH.exists() else ""
        if committed != text:
            diff = difflib.unified_diff(
                committed.splitlines(), text.splitlines(), "committed", "generated", lineterm=""
            )
            print("\n".join(list(diff)[:60]), file=sys.stderr)
            print(f"docs/openapi.json is stale: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
