"""What every `sfhpc export` shares: the problems an export lists instead of skipping quietly, and its output folder.
Each export lives beside the stage whose results it writes out (sfhpc.stages.rsa.export: RDMs for rsatoolbox;
sfhpc.stages.attack.export: model-info files for RobustBench). Login-node code: no torch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sfhpc.errors import RunError


@dataclass(frozen=True)
class ExportProblem:
    """A point (or a model's group of points, or one of its files) with nothing exported, and why."""

    point: str
    state: str  # missing | corrupt (its result), or what the export found wrong: each export names its own
    reason: str


def export_folder(folder: Path) -> Path:
    """The export folder, `~` expanded, made when missing; a RunError when it is a file."""
    folder = folder.expanduser()
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{folder} is a file; give a folder to export into")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def copy_hashed(source: Path, target: Path, chunk_bytes: int = 1 << 20) -> str:
    """Copy `source` onto `target` (its folder made), returning the SHA-256 of the bytes copied: one read of the
    file for both."""
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while chunk := reader.read(chunk_bytes):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()
