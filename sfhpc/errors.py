"""User-facing errors, kept free of heavy imports so every command can catch them cheaply."""

from __future__ import annotations

from pathlib import Path


class SweepError(Exception):
    """A user's mistake in a sweep or job file, located by file, line and key."""

    def __init__(self, file: Path | str, line: int | None, key: str, message: str):
        self.file, self.line, self.key, self.message = str(file), line, key, message
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class RunError(Exception):
    """A problem with a run folder that the user must resolve (wrong path, changed sweep, ...)."""
