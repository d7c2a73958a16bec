"""What sfhpc knows about a stage before it imports any of the stage's torch code: its `StageSpec`.

A stage is declared in one place, its spec: the parameters it takes (a closed pydantic model), the stages it reads
and how its points map onto theirs, its shard parameter, the checks its points pass at expand time, and what it
adds to the report (sfhpc.report.model.StageReport: the names of the metrics it writes, its tables and figures).
The sweep expansion, the launcher and the report iterate the registry of specs (sfhpc.stages.registry); no other
module names a stage's parameters or metrics.

Login-node code: a spec module imports no torch. The code that runs a point on a node is named by `runner`
("module:function") and imported only there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sfhpc.config import Closed, DataConfig, JobSpec

if TYPE_CHECKING:
    from sfhpc.job import JobInfo, PointRun
    from sfhpc.report.model import StageReport

P = TypeVar("P", bound=Closed)
# A parameter whose default changed what a point computes names, in its field's json_schema_extra under this key,
# the value that behaves as before it existed: point ids hash the parameter unless it has that value, so that points
# on the new default get new ids (and new results) while those set to the old behaviour keep their ids and results.
ID_DEFAULT = "id_default"


class ParamError(ValueError):
    """A failed expand-time check that names the parameter at fault, so that the error points at its line."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class DataAbsent(ParamError):
    """An expand-time check that could not run because the data it reads is not here (no ImageNet copy, no prepared
    NSD file, no weights file yet): `sweep expand` plans without it and lists it; `sweep launch` refuses."""


@dataclass(frozen=True)
class Shards:
    """A sharded stage: each point of its upstream is split into `count` points (array tasks), numbered by the
    parameter `index`, which sfhpc sets. The count is the job file's `shards`, or the sweep parameter `count`."""

    index: str
    count: str


@dataclass(frozen=True)
class OptionalUpstream:
    """An upstream stage that only the points with a positive `when` parameter read (a guided train point reads its
    predictor; an unguided one reads none, and expands once, not once per subject and ROI). `why` says what it
    supplies, for the error when the sweep lacks it."""

    stage: str
    when: str
    why: str


@dataclass(frozen=True)
class StageSpec(Generic[P]):
    """One stage. `entry` is the module job files name (`entry:` in jobs/<stage>.yaml), which holds this spec as
    `SPEC`; `runner` is "module:function", the function run on the node with the point's typed config
    (sfhpc.job.PointRun), returning the result file's path.

    `check(params, data, job)` runs at expand time for each distinct point: a ValueError is a located error at the
    parameter its ParamError names, else at `check_key`. `report` is "module:attribute", a torch-free
    sfhpc.report.model.StageReport: what the stage adds to the report (None: only summary.csv shows its points)."""

    name: str
    entry: str
    params: type[P]
    runner: str
    upstream: tuple[str, ...] = ()
    optional_upstream: OptionalUpstream | None = None
    shards: Shards | None = None
    check: Callable[[P, DataConfig, JobSpec], None] | None = None
    check_key: str | None = None
    report: str | None = None

    def needs_optional(self, params: dict[str, Any]) -> bool:
        """Whether a point with these parameters reads the optional upstream stage."""
        optional = self.optional_upstream
        return optional is not None and params.get(optional.when, 0) > 0

    def upstream_in(self, stages: Any) -> tuple[str, ...]:
        """The upstream stages among `stages` (a sweep's): the required ones, and the optional one when present."""
        optional = self.optional_upstream
        return (*self.upstream, *((optional.stage,) if optional and optional.stage in stages else ()))

    def n_shards(self, params: dict[str, Any], job: JobSpec | JobInfo) -> int:
        """Shards per upstream point: the sweep's count parameter, else the job file's `shards` (read from the file
        at expand time, from the JobInfo a point carries in its job; 1 unsharded)."""
        if self.shards is None:
            return 1
        return params.get(self.shards.count) or job.shards

    def runner_module(self) -> str:
        return self.runner.partition(":")[0]

    def load_runner(self) -> Callable[[PointRun[P]], Path]:
        """The function that runs a point (imports the stage's torch code)."""
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)

    def load_report(self) -> StageReport | None:
        """What the stage adds to the report (imports the stage's report code: numpy, h5py, never torch)."""
        if self.report is None:
            return None
        module, _, attribute = self.report.partition(":")
        return getattr(importlib.import_module(module), attribute)
