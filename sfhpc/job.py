"""What runs on a node: one point of one stage, with its typed configuration.

`PointConfig` is built once at launch (sfhpc.launch.point_config), written beside the point as config.yaml and into
its result, and parsed once in the job (`run_point`), together with the stage's own parameters: a stage's code
receives a `PointRun` and never re-validates a dict. `PointRun.write_result` writes the point's result file with
its provenance.

Login-node code as far as the launcher uses it (PointConfig, PointJob): the stage's module, and torch with it, is
imported only when the job runs.
"""

from __future__ import annotations

import importlib
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import submitit
from pydantic import Field

from sfhpc.config import Closed, DataConfig, Int, Resources
from sfhpc.results import RESULT_NAME, Provenance, now_iso, write_result
from sfhpc.rundir import RunDir
from sfhpc.stages.spec import StageSpec

P = TypeVar("P", bound=Closed)


class JobInfo(Closed):
    """The job file's settings a point needs: its stage module and the stage's shards per upstream point."""

    entry: str
    shards: Int = 1


class PointConfig(Closed):
    """The resolved configuration a point runs with. `params` are the stage's parameters (validated by its spec's
    model when the job parses them); `upstream` the points it reads ("stage/point id"); `threads` None lets the
    job's CPUs decide (a local launch sets it for the points that share the machine)."""

    stage: str
    point_id: str
    params: dict[str, Any]
    data: DataConfig
    upstream: tuple[str, ...] = ()
    resources: Resources = Resources()
    job: JobInfo
    run_dir: str | None = Field(None, description="the run folder (None: a point run on its own, in tests)")
    git_sha: str = "unknown"
    threads: Int | None = None


@dataclass(frozen=True)
class PointRun(Generic[P]):
    """One point as its stage's code sees it: the config, the stage's typed parameters, its folder and when the
    job started."""

    config: PointConfig
    params: P
    dir: Path
    started: str

    @property
    def point_id(self) -> str:
        return self.config.point_id

    @property
    def data(self) -> DataConfig:
        return self.config.data

    @property
    def run_dir(self) -> Path | None:
        return Path(self.config.run_dir) if self.config.run_dir else None

    @property
    def data_cache(self) -> Path | None:
        """The run folder's data/ (shared by every point of the run), when the point runs inside a run."""
        return self.run_dir / "data" if self.run_dir else None

    def only_upstream(self) -> str:
        """The one upstream point ("stage/point id") of a stage that evaluates one model."""
        (upstream,) = self.config.upstream
        return upstream

    def write_result(self, metrics: dict[str, Any], curves: dict[str, Any], attrs: dict[str, Any] | None = None
                     ) -> Path:
        """Atomically write the point's result file: its metrics and curves, its config and its provenance."""
        path = self.dir / RESULT_NAME
        write_result(path, stage=self.config.stage, point_id=self.config.point_id,
                     config=self.config.model_dump(mode="json"),
                     provenance=Provenance(self.config.git_sha, self.started, now_iso()), metrics=metrics,
                     curves=curves, extra_attrs=attrs)
        return path


def stage_of(entry: str) -> StageSpec[Any]:
    """The spec held as SPEC by a stage's module (a job file's `entry`)."""
    spec = getattr(importlib.import_module(entry), "SPEC", None)
    if not isinstance(spec, StageSpec):
        raise RuntimeError(f"{entry} holds no stage spec (SPEC, a sfhpc.stages.spec.StageSpec)")
    return spec


def run_point(config: PointConfig | dict[str, Any], point_dir: Path) -> Path:
    """Parse a point's config and its stage's parameters once, run the stage, return its result file's path."""
    started = now_iso()
    point = config if isinstance(config, PointConfig) else PointConfig.model_validate(config)
    spec = stage_of(point.job.entry)
    params = spec.params.model_validate(point.params)
    return spec.load_runner()(PointRun(point, params, point_dir, started))


class PointJob(submitit.helpers.Checkpointable):
    """What runs on the node: one point of one stage. Small and picklable; on a time limit or preemption
    submitit calls `checkpoint`, which requeues this same job, and the stage resumes from its checkpoint."""

    def __init__(self, run_dir: str, stage: str, entry: str, point_id: str, config: dict[str, Any]):
        self.run_dir, self.stage, self.entry, self.point_id, self.config = run_dir, stage, entry, point_id, config

    def __call__(self) -> str:
        keep_freed_memory()
        point_dir = RunDir(self.run_dir).point_dir(self.stage, self.point_id)
        try:
            return str(run_point(self.config, point_dir))
        except Exception as err:
            # Kept beside the point so that `sfhpc status` can show why, whatever the scheduler says:
            # a one-line summary first, then the traceback.
            summary = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            (point_dir / "error.txt").write_text(f"{summary}\n\n{traceback.format_exc()}")
            raise


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory() -> None:
    """Make glibc's malloc keep the memory a process frees instead of handing it back to the kernel.

    By default every freed block larger than the mmap threshold is unmapped, and the top of the heap is trimmed,
    so each training batch maps its activations afresh and page-faults them in: measured on a quickstart train
    point (one CPU thread), 12.5 s of its 63 s were system time. With a 1 GiB mmap threshold and no trimming it
    took 51 s, 1.4 s of them system time. The cost is a heap that stays at its peak size until the process ends,
    which is one point. A C library without mallopt (not glibc) is left alone."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):
        pass
