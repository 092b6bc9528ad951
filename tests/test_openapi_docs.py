"""The OpenAPI document describes every route: a summary, and an example for every
JSON request body, so /docs is usable without reading the code."""

from __future__ import annotations

from typing import Any

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.service import open_pool
from tests.support import api_context


def openapi() -> dict[str, Any]:
    settings = Settings(database_url="postgresql://unused/")
    doc: dict[str, Any] = create_app(
        api_context(settings, open_pool("postgresql://unused/"))
    ).openapi()
    return doc


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def test_every_operation_has_a_summary_and_body_examples() -> None:
    doc = openapi()
    missing_summary: list[str] = []
    missing_example: list[str] = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            name = f"{method.upper()} {path}"
            if not op.get("summary"):
                missing_summary.append(name)
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None:
                continue
            schema = resolve(doc, body["schema"])
            if not (schema.get("examples") or schema.get("example") or body.get("examples")):
                missing_example.append(f"{name} ({body['schema'].get('$ref', 'inline')})")
    assert not missing_summary, f"operations without a summary: {missing_summary}"
    assert not missing_example, f"JSON bodies without an example: {missing_example}"


def test_the_api_declares_its_security_schemes() -> None:
    doc = openapi()
    schemes = doc["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"oauth2", "apiKey"}
    token = doc["paths"]["/api/v1/auth/token"]["post"]
    assert "security" not in token  # the one route that needs no credentials
    assert doc["paths"]["/api/v1/poles"]["get"]["security"]
