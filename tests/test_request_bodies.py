"""Every JSON request body refuses a field it does not know (issue 16, item 16): a
client that misspells a field learns it at once instead of believing it was taken."""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter

from tests.support import api_routes

WRITES = {"POST", "PUT", "PATCH"}


def _objects(schema: Any, defs: dict[str, Any], seen: set[str]) -> list[tuple[str, Any]]:
    """Every object schema with properties reachable from `schema` (through $refs)."""
    found: list[tuple[str, Any]] = []
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if name not in seen:
                seen.add(name)
                found += [(name, d) for _, d in _objects(defs[name], defs, seen)]
            return found
        if "properties" in schema:
            found.append((str(schema.get("title", "?")), schema))
        for key, value in schema.items():
            if key != "$defs":
                found += _objects(value, defs, seen)
    elif isinstance(schema, list):
        for value in schema:
            found += _objects(value, defs, seen)
    return found


def _json_body(route: APIRoute) -> type[BaseModel] | None:
    field = route.body_field
    if field is None:
        return None
    annotation = field.field_info.annotation
    # Form bodies (login, uploads) are FastAPI's own models: not JSON.
    if not isinstance(annotation, type) or annotation.__module__.startswith("fastapi"):
        return None
    assert issubclass(annotation, BaseModel), (route.path, annotation)
    return annotation


def test_every_json_write_body_refuses_unknown_fields() -> None:
    checked, open_objects = 0, []
    for path, route in api_routes():
        methods = route.methods or set()
        if not (methods & WRITES):
            continue
        model = _json_body(route)
        if model is None:
            continue
        checked += 1
        schema = TypeAdapter(model).json_schema()
        for name, obj in _objects(schema, schema.get("$defs", {}), set()):
            if obj.get("additionalProperties") is not False:
                open_objects.append(f"{sorted(methods)} {path}: {name}")
    assert checked > 40  # the walk found the API's bodies (not an empty app)
    assert not open_objects, f"bodies that accept unknown fields: {open_objects}"
