"""Load YAML and remember the line of every value, so errors can name file and line."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from gateway.errors import SourceProblem

Path = tuple[str | int, ...]


class LineMap:
    """Maps a path into the loaded document (keys and indices) to its 1-based line."""

    def __init__(self) -> None:
        self._lines: dict[Path, int] = {}

    def add(self, path: Path, line: int) -> None:
        self._lines.setdefault(path, line)

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """The line of the deepest known prefix of `path`."""
        p = tuple(path)
        while True:
            if p in self._lines:
                return self._lines[p]
            if not p:
                return None
            p = p[:-1]


def _walk(node: yaml.Node, path: Path, lines: LineMap) -> None:
    lines.add(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            lines.add((*path, key), key_node.start_mark.line + 1)
            _walk(value_node, (*path, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines)


def load_yaml(text: str, filename: str) -> tuple[Any, LineMap]:
    """Parse YAML text safely; a syntax error becomes a SourceProblem with its line."""
    lines = LineMap()
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise YamlSyntaxError(
            SourceProblem(filename, line, "", f"invalid YAML: {exc.problem or exc}")
        ) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(SourceProblem(filename, None, "", f"invalid YAML: {exc}")) from None
    finally:
        loader.dispose()
    if node is not None:
        _walk(node, (), lines)
    return data, lines


class YamlSyntaxError(Exception):
    """Internal: carries the single problem of an unparseable file."""

    def __init__(self, problem: SourceProblem) -> None:
        self.problem = problem
        super().__init__(str(problem))


def format_loc(loc: Sequence[str | int]) -> str:
    """('poles', 0, 'devices', 1, 'id') -> 'poles[0].devices[1].id'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def problems_from_validation(
    exc: ValidationError,
    filename: str,
    lines: LineMap,
    prefix: Path = (),
    *,
    model: type[BaseModel] | None = None,
) -> list[SourceProblem]:
    """Turn pydantic's errors into file/line/field problems. With the `model` that was
    validated, an unknown field names the field probably meant."""
    problems = []
    for err in exc.errors(include_url=False):
        # pydantic puts model-validator errors at the model's loc; tagged-union
        # discriminators appear as extra str parts that are not document keys.
        loc = tuple(p for p in err["loc"] if isinstance(p, int | str))
        full = (*prefix, *loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and loc and model is not None:
            msg = unknown_field(str(loc[-1]), fields_at(model, loc[:-1]))
        problems.append(SourceProblem(filename, lines.line_of(full), format_loc(full), msg))
    return problems


def unknown_field(name: str, known: Sequence[str]) -> str:
    """ "unknown field 'heigth_m' (did you mean 'height_m'?)", or the fields allowed."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"unknown field {name!r} (did you mean {close[0]!r}?)"
    if known:
        return f"unknown field {name!r} (allowed: {', '.join(sorted(known))})"
    return f"unknown field {name!r}"


def _alternatives(annotation: object) -> list[object]:
    """The types a value of `annotation` may have: through Annotated, Optional and unions."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _alternatives(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return [alt for a in args for alt in _alternatives(a)]
    return [annotation]


def _step(annotation: object, part: str | int) -> list[object]:
    """The types found one step (a field, a list index, a dict key) inside `annotation`."""
    out: list[object] = []
    for alt in _alternatives(annotation):
        origin = typing.get_origin(alt)
        args = typing.get_args(alt)
        if isinstance(alt, type) and issubclass(alt, BaseModel) and isinstance(part, str):
            field = alt.model_fields.get(part)
            if field is not None:
                out.append(field.annotation)
        elif origin in (list, tuple, set, frozenset, Sequence) and isinstance(part, int) and args:
            out.append(args[0])
        elif origin is dict and isinstance(part, str) and args:
            out.append(args[-1])
    return out


def fields_at(model: type[BaseModel], loc: Path) -> list[str]:
    """The field names of the model(s) found at `loc` inside `model`; [] when the
    path leads to no model."""
    current: list[object] = [model]
    for part in loc:
        current = [found for ann in current for found in _step(ann, part)]
    names: list[str] = []
    for ann in current:
        for alt in _alternatives(ann):
            if isinstance(alt, type) and issubclass(alt, BaseModel):
                for name, field in alt.model_fields.items():
                    shown = field.alias or name
                    if shown not in names:
                        names.append(shown)
    return names
