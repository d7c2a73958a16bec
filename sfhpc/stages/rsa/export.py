"""`sfhpc export rdms RUN DIR`: every rsa point's RDM files (rsatoolbox's HDF5 layout, sfhpc.stages.rsa.rdm_file)
copied out of a run folder into one folder, named by point and subject, with an index (rdms.json).

A file is copied only when its bytes are those its point's result recorded (their SHA-256, checked as they are
copied); a point without a valid result, a result without RDM files (written by an sfhpc that wrote none) and a file
that is missing or changed are listed as problems, never skipped quietly. Login-node code: no torch.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sfhpc.errors import RunError
from sfhpc.exports import ExportProblem, copy_hashed, export_folder
from sfhpc.results import atomic_write, check_result, now_iso, read_metrics
from sfhpc.rundir import RunDir, manifest_points
from sfhpc.stages.rsa import RDM_FILES_ATTR, SPEC
from sfhpc.stages.rsa.rdm_file import DISSIMILARITY_MEASURE

INDEX_NAME = "rdms.json"
READ_WITH = "rsatoolbox.rdm.load_rdm(path, file_type='hdf5')"


@dataclass(frozen=True)
class RdmFile:
    """One RDM file of a point, as its result records it (RDM_FILES_ATTR), and where it is."""

    file: str  # its name in the export folder (export_name)
    point: str
    model: str  # the compared model's train point, "train/<point id>"
    subject: str
    images: int
    layers: list[str]
    rois: list[str]
    sha256: str
    source: str  # its path in the run folder


def export_name(point: str, subject: str) -> str:
    """An RDM file's name in the export folder: point and subject (a point id names one folder, so one file)."""
    return f"{point}.{subject}.rdms.h5"


@dataclass(frozen=True)
class RdmExport:
    """What `export_rdms` copied into `folder` and what it could not."""

    run: str
    folder: str
    index: str
    exported: str
    dissimilarity_measure: str
    read_with: str
    files: list[RdmFile]
    # states: missing | corrupt (its result) | no RDM files (an older result) | file missing | file changed
    problems: list[ExportProblem]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _NotCopied(Exception):
    """A recorded file that cannot be copied: missing, or its bytes not those its result recorded."""

    def __init__(self, state: str, reason: str):
        super().__init__(reason)
        self.state, self.reason = state, reason


def export_rdms(run: RunDir, folder: Path) -> RdmExport:
    """Copy every rsa point's RDM files of `run` into `folder` (made when missing) and write the index there. A
    RunError when the run has no rsa stage, when no rsa point has RDM files, or when `folder` is a file. Paths in the
    index are absolute: it outlives the working directory it was made from."""
    run = RunDir(run.path.resolve())
    recorded, problems = recorded_files(run)
    if not recorded:
        states = Counter(problem.state for problem in problems)
        raise RunError(f"nothing to export: none of the {len(problems)} {SPEC.name} points of {run.path} has RDM "
                       f"files ({', '.join(f'{n} {state}' for state, n in states.items())}); `sfhpc status "
                       f"{shlex.quote(str(run.path))}` says which points are done")
    folder = export_folder(folder).resolve()
    copied = []
    for entry in recorded:
        problem = copy_recorded(entry, folder)
        if problem:
            problems.append(problem)
        else:
            copied.append(entry)
    export = RdmExport(run=str(run.path), folder=str(folder), index=str(folder / INDEX_NAME), exported=now_iso(),
                       dissimilarity_measure=DISSIMILARITY_MEASURE, read_with=READ_WITH, files=copied,
                       problems=problems)
    atomic_write(folder / INDEX_NAME, lambda tmp: tmp.write_text(json.dumps(export.to_json(), indent=1) + "\n"))
    return export


def rsa_points(run: RunDir) -> list[str]:
    """The ids of the run's rsa points, in launch order; a RunError naming the run's stages when it has none."""
    manifest = run.read_manifest()
    stages = [stage["name"] for stage in manifest["plan"]["stages"]]
    if SPEC.name not in stages:
        raise RunError(f"{run.path} has no {SPEC.name} stage (its stages: {', '.join(stages)}); RDM files come from "
                       f"{SPEC.name} points")
    return [point["id"] for stage, point in manifest_points(manifest) if stage == SPEC.name]


def recorded_files(run: RunDir) -> tuple[list[RdmFile], list[ExportProblem]]:
    """Every RDM file the run's rsa results record, and the points whose result records none."""
    files: list[RdmFile] = []
    problems: list[ExportProblem] = []
    for point in rsa_points(run):
        found = point_files(run, point)
        if isinstance(found, ExportProblem):
            problems.append(found)
        else:
            files += found
    return files, problems


def point_files(run: RunDir, point: str) -> list[RdmFile] | ExportProblem:
    """The RDM files one rsa point's result records, or why there are none."""
    result = run.result_path(SPEC.name, point)
    check = check_result(result, point)
    if check.state != "ok":
        return ExportProblem(point, check.state, check.reason or "no result yet")
    _, attrs = read_metrics(result)
    if RDM_FILES_ATTR not in attrs:
        return ExportProblem(point, "no RDM files", "its result was written by an sfhpc that wrote no RDM files; "
                                                    "rerun the point to write them")
    return [RdmFile(file=export_name(point, entry["subject"]), point=point, model=str(attrs.get("upstream", "")),
                    subject=entry["subject"], images=entry["images"], layers=entry["layers"], rois=entry["rois"],
                    sha256=entry["sha256"], source=str(result.parent / entry["file"]))
            for entry in json.loads(attrs[RDM_FILES_ATTR])]


def copy_recorded(entry: RdmFile, folder: Path) -> ExportProblem | None:
    """Copy one RDM file into `folder` under its export name, atomically; the problem when it is missing or its
    bytes are not those its result recorded (then nothing is written)."""
    try:
        atomic_write(folder / entry.file, lambda tmp: _copy_checked(entry, tmp), suffix=".h5")
    except _NotCopied as err:
        return ExportProblem(entry.point, err.state, err.reason)
    return None


def _copy_checked(entry: RdmFile, target: Path) -> None:
    """Copy the file onto `target`, hashing its bytes as they pass; _NotCopied when it is missing or their SHA-256
    is not the one its result recorded."""
    try:
        digest = copy_hashed(Path(entry.source), target)
    except FileNotFoundError:
        raise _NotCopied("file missing", f"{entry.source}: recorded by its result, not there") from None
    if digest != entry.sha256:
        raise _NotCopied("file changed", f"{entry.source}: not the file its result was written with (a later run "
                                         "of the point that did not finish?); rerun the point")
