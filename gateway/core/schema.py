"""What every schema of a YAML file (profiles, site) shares: strictness, and
cross-field problems that point at their own field."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from gateway.core.yamlsource import format_loc

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
MetricName = Annotated[str, Field(pattern=NAME_PATTERN)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Loc = tuple[str | int, ...]


class FieldProblems(ValueError):
    """Problems a cross-field check found, each at its own path below the model checked.

    pydantic reports a model validator's error at the model; parse_profile puts
    each of these at its field instead, so the message names the right line.
    """

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{format_loc(p)}: {m}" if p else m for p, m in problems))
