"""Shared fixtures. Paths deliberately contain spaces and quotes: users' folders do."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sfhpc.errors import SweepError
from sfhpc.sweep import expand_file

from slurm_cluster import slurm_cluster  # noqa: F401  (the real SLURM test cluster, session-scoped fixture)

TINY_SWEEP = """\
name: tiny
executor: local
data:
  image_size: 32
  n_classes: 4
  n_train: 64
  n_val: 32
  n_test: 32
grid:
  band: [none, lsf]
  seed: [0]
stages:
  train:
    params:
      width: 4
      epochs: 2
      batch_size: 32
      lr: 0.05
"""


@pytest.fixture
def awkward_dir(tmp_path: Path) -> Path:
    """A folder whose path has a space and a quote in it."""
    folder = tmp_path / "lab's sweeps"
    folder.mkdir()
    return folder


@pytest.fixture
def write_sweep(awkward_dir: Path):
    """write_sweep(text, name='sweep.yaml') -> path of a sweep file with that (dedented) text."""

    def write(text: str, name: str = "sweep.yaml") -> Path:
        path = awkward_dir / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def tiny_sweep(write_sweep) -> Path:
    return write_sweep(TINY_SWEEP, "tiny.yaml")


def located_error(write_sweep, text: str, line: int | None, key: str, words: list[str]) -> SweepError:
    """Expand a sweep file of this text: it must fail with a SweepError naming the file, `line` and `key`, whose
    message holds every one of `words`."""
    path = write_sweep(text)
    with pytest.raises(SweepError) as info:
        expand_file(path)
    err = info.value
    assert err.file == str(path) and str(err).startswith(f"{path}:"), str(err)
    assert (err.line, err.key) == (line, key), str(err)
    for word in words:
        assert word in err.message, str(err)
    return err


def point_config(stage: str, params: dict, data: dict, **fields) -> dict:
    """A point's config (sfhpc.job.PointConfig) as its job receives it, for running one point of a built-in stage
    with sfhpc.job.run_point: point id `p`, git sha `test`, one CPU thread; `fields` add or override keys (run_dir,
    upstream, point_id)."""
    return {"stage": stage, "point_id": "p", "params": params, "data": data,
            "job": {"entry": f"sfhpc.stages.{stage}", "shards": 1}, "git_sha": "test", "threads": 1, **fields}



def toy_config(point_id: str, **params) -> dict:
    """The config of a point of a toy stage: a module toy_stage, which a test writes into its working folder (where the
    job imports it from), holding the stage's SPEC (entry toy_stage, runner toy_stage:run) and `run(point)`."""
    return {"stage": "toy", "point_id": point_id, "params": params, "data": {}, "job": {"entry": "toy_stage"}}
