"""One exception tree for the whole toolkit.

The CLI maps these to exit codes: ``SpecError``/``UsageError``/``BusyError`` → 2
(bad usage or input), everything else derived from ``TwinError`` → 1 (failed work).
Library code raises; only the CLI prints.
"""
from __future__ import annotations


class TwinError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    exit_code = 1


class UsageError(TwinError):
    """Bad command-line usage or bad input named by the user (a file, a URL, an option)."""

    exit_code = 2


class SpecError(UsageError):
    """A persona spec that does not validate. ``problems`` holds one line per problem."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class ConsentError(SpecError):
    """A spec without a usable consent basis, or a source on the opt-out list."""


class BusyError(UsageError):
    """The workspace is locked by another build."""


class StageError(TwinError):
    """A stage failed; ``stage`` names it."""

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"stage {stage}: {message}")


class MissingDependency(TwinError):
    """An optional package or model needed for the chosen backend is not installed."""
