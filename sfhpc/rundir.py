"""The run folder: manifest, one folder per point, and the record of every submission.

    runs/<name>/
      manifest.json            resolved sweep, points per stage, code version (written by `sweep launch`)
      sweep.yaml               the sweep file as launched
      jobs.jsonl               one line per submission: stage, point, executor, job id, log folder, time
      logs/                    submitit's stdout/stderr and pickles, per job
      <stage>/<point_id>/      config.yaml, result.h5, checkpoint, error.txt (traceback of a failed attempt)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfhpc.errors import RunError
from sfhpc.results import RESULT_NAME, ResultIndex, atomic_write

MANIFEST_NAME = "manifest.json"
ERROR_NAME = "error.txt"
CHECKPOINT_NAME = "checkpoint.pt"  # a stage's resumable state, beside its result


@dataclass(frozen=True)
class JobRecord:
    stage: str
    point: str
    executor: str
    job_id: str | None  # None: queued by a local launcher, not started yet
    log_dir: str
    submitted: str
    launcher_pid: int
    blocked_by: str | None = None  # local runs: the input ("stage/point") without a result that kept it from running


class RunDir:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    @classmethod
    def find(cls, name_or_path: str | Path) -> RunDir:
        """A run folder by path, or by sweep name under ./runs."""
        for candidate in (Path(name_or_path), Path("runs") / str(name_or_path)):
            if (candidate / MANIFEST_NAME).exists():
                return cls(candidate)
        raise RunError(f"no run folder at {name_or_path!s} (no {MANIFEST_NAME} there or under runs/); "
                       "create one with `sfhpc sweep launch SWEEP.yaml`")

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunError(f"cannot read {self.manifest_path}: {err}") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write(self.manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))

    def point_dir(self, stage: str, point_id: str) -> Path:
        return self.path / stage / point_id

    def result_path(self, stage: str, point_id: str) -> Path:
        return self.point_dir(stage, point_id) / RESULT_NAME

    def result_index(self) -> ResultIndex:
        return ResultIndex(self.path / ".result-index.json")

    def error_path(self, stage: str, point_id: str) -> Path:
        return self.point_dir(stage, point_id) / ERROR_NAME

    # -------------------------------------------------------------------------------- job records
    @property
    def jobs_path(self) -> Path:
        return self.path / "jobs.jsonl"

    def record_jobs(self, records: list[JobRecord]) -> None:
        """Append submissions; one write per batch keeps the file consistent under concurrent readers."""
        text = "".join(json.dumps(record.__dict__) + "\n" for record in records)
        with open(self.jobs_path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def latest_jobs(self) -> dict[tuple[str, str], JobRecord]:
        """The last submission of each (stage, point)."""
        latest: dict[tuple[str, str], JobRecord] = {}
        if not self.jobs_path.exists():
            return latest
        for line in self.jobs_path.read_text().splitlines():
            try:
                record = JobRecord(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # a line cut by a crash mid-write: older records stay usable
            latest[(record.stage, record.point)] = record
        return latest


def manifest_points(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(stage name, point dict) for every point, in launch order."""
    return [(stage["name"], point) for stage in manifest["plan"]["stages"] for point in stage["points"]]


def tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])
    except OSError:
        return ""
