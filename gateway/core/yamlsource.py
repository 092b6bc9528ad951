"""Load YAML and remember the line of every value, so errors can name file and line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import ValidationError

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
    exc: ValidationError, filename: str, lines: LineMap, prefix: Path = ()
) -> list[SourceProblem]:
    """Turn pydantic's errors into file/line/field problems."""
    problems = []
    for err in exc.errors(include_url=False):
        # pydantic puts model-validator errors at the model's loc; tagged-union
        # discriminators appear as extra str parts that are not document keys.
        loc = tuple(p for p in err["loc"] if isinstance(p, int | str))
        full = (*prefix, *loc)
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(SourceProblem(filename, lines.line_of(full), format_loc(full), msg))
    return problems
