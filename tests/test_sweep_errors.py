"""Every malformed sweep gets a message naming the file, the line and the key, and saying what is allowed."""

from __future__ import annotations

import pytest

from sfhpc.config import SweepError
from sfhpc.sweep import expand_file

from conftest import located_error

HEAD = "name: bad\ndata: {image_size: 32}\n"


CASES = [
    # (sweep text, line, key, words the message must contain)
    (HEAD + "grid: {seed: [0]}\nstages: {train: {}}\nflavour: vanilla\n", 5, "flavour",
     ["unknown key", "allowed:", "grid", "stages"]),
    (HEAD + "grid:\n  seed: [0]\nstages:\n  trian: {}\n", 6, "stages.trian", ["unknown stage", "train"]),
    (HEAD + "grid:\n  seed: [0]\n  bnd: [lsf]\nstages: {train: {}}\n", 5, "grid.bnd", ["unknown axis", "band"]),
    (HEAD + "grid:\n  seed: []\nstages: {train: {}}\n", 4, "grid.seed", ["empty list"]),
    (HEAD + "stages: {train: {}}\n", 1, "grid", ["empty grid"]),
    (HEAD + "grid:\n  seed: [0]\nstages:\n  train:\n    params:\n      epochs: three\n", 8,
     "stages.train.params.epochs", ["integer", "three"]),
    (HEAD + "grid:\n  seed: [0]\nstages:\n  train:\n    params:\n      lerning_rate: 0.1\n", 8,
     "stages.train.params.lerning_rate", ["unknown parameter", "lr"]),
    (HEAD + "grid:\n  band:\n    - none\n    - hsf\nstages: {train: {}}\n", 6, "grid.band[1]",
     ["'hsf'", "allowed", "'lsf+human'"]),
    (HEAD + "grid:\n  alpha:\n    - 1.5\nstages: {train: {}}\n", 5, "grid.alpha[0]", ["less than or equal to 1"]),
    (HEAD + "grid:\n  band: [none, human]\nstages: {train: {}}\n", 4, "grid.band[1]",
     ["56.0 c/img", "Nyquist 16", "image_size >= 112"]),
    (HEAD + "grid:\n  seed: [0, 1]\ninclude:\n  - {seed: 1}\nstages: {train: {}}\n", 6, "include[0].seed",
     ["duplicate point", "line 4"]),
    (HEAD + "grid:\n  seed: [0]\n  seed: [1]\nstages: {train: {}}\n", 5, "grid.seed", ["duplicate key"]),
    (HEAD + "grid:\n  seed: [0]\nstages:\n  train:\n    params: {{}}\n", 7, "stages.train.params",
     ["a key that is a mapping", "write `{}`"]),
    (HEAD + "grid:\n  ? [seed, band]\n  : [0]\nstages: {train: {}}\n", 4, "grid",
     ["a key that is a mapping or a list"]),
    (HEAD + "grid:\n  seed: [0]\nstages:\n  train:\n    params: {seed: 3}\n", 7, "stages.train.params.seed",
     ["both a sweep axis and a fixed parameter"]),
    (HEAD + "zip:\n  seed: [0, 1]\n  lr: [0.1]\nstages: {train: {}}\n", 3, "zip", ["equal lengths"]),
    (HEAD + "grid:\n  seed: [0]\nstages:\n  train:\n    job: trainer\n", 7, "stages.train.job",
     ["no such job file", "train"]),
    (HEAD + "grid:\n  seed: [0]\nstages:\n  train:\n    job: paper_cbm\n", 7, "stages.train.job",
     ["runs sfhpc.stages.cbm, not the train stage"]),
    (HEAD + "grid:\n  seed: [0]\nstages:\n  train:\n    resources: {nodes: 0}\n", 7, "stages.train.resources.nodes",
     ["greater than or equal to 1"]),
    (HEAD + "grid:\n  seed: [0]\nexecutor: kubernetes\nstages: {train: {}}\n", 5, "executor",
     ["'kubernetes'", "'slurm'", "'local'"]),
    (HEAD + "grid: {seed: [0]\nstages: {train: {}}\n", 4, "", ["not valid YAML"]),
    ("- just\n- a list\n", 1, "", ["must be a mapping"]),
    (HEAD + "grid:\n  seed: [0]\n", 1, "stages", ["required key is missing"]),
]


@pytest.mark.parametrize("text, line, key, words", CASES, ids=[c[2] or c[3][0] for c in CASES])
def test_malformed_sweep_is_located_and_explained(write_sweep, text, line, key, words):
    located_error(write_sweep, text, line, key, words)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SweepError, match="file not found") as info:
        expand_file(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)
