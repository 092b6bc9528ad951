"""Every exception polegw raises on purpose, in one place, each carrying its data."""

from __future__ import annotations

from dataclasses import dataclass


class PolegwError(Exception):
    """Base of polegw's own exceptions."""


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """One problem in a user-supplied file: where it is and what is wrong."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class SourceFileError(PolegwError):
    """A YAML file (profile, site) that cannot be accepted; lists every problem found."""

    def __init__(self, problems: list[SourceProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ProfileError(SourceFileError):
    """A device profile in devices/ is invalid."""


class SiteError(SourceFileError):
    """A site file for `polegw site import` is invalid."""


class ConfigError(PolegwError):
    """Settings that cannot be used (for example a placeholder secret in production)."""


class StorageUnavailable(PolegwError):
    """The database cannot be reached; the caller keeps its data and retries."""


class EmbeddedServiceError(PolegwError):
    """An embedded broker or database (polegw demo) could not be started."""


class DatabaseUnreachable(ConfigError):
    """The database named by POLEGW_DATABASE_URL cannot be reached or refuses us."""


class HandoverRefused(PolegwError):
    """A handover package (or the database it is to go into) that cannot be used;
    the message is one line naming what is wrong. Nothing was loaded."""
