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


def test_every_metering_flag_is_listed() -> None:
    """Issue 16, item 18: `wrapped` was in no list of flags. The API's schemas of usage
    flags and bill lines enumerate them all, and the README names each."""
    from pathlib import Path

    from gateway.core.metering import Flag

    schemas = openapi()["components"]["schemas"]
    for name in ("UsageFlag", "BillLine"):
        flags = resolve(openapi(), schemas[name]["properties"]["flags"]["items"])
        assert set(flags["enum"]) == {f.value for f in Flag}, name
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert all(f"`{f.value}`" in readme for f in Flag)


def test_readme_api_examples_carry_credentials() -> None:
    """Issue 16, item 18: the README's command example had no credentials and answered
    401 as written. Every curl of an /api/v1 route but the login sends some."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    # one command per entry: join continued lines
    commands = re.sub(r"\\\n\s*", " ", readme).splitlines()
    calls = [c for c in commands if "curl" in c and "/api/v1/" in c]
    assert len(calls) >= 3
    bare = [
        c
        for c in calls
        if "/api/v1/auth/token" not in c and "Authorization: Bearer" not in c
        if "X-API-Key" not in c
    ]
    assert not bare, f"README examples that would answer 401: {bare}"
