"""Sweep expansion is pure and deterministic: exact ids, exact order, stable hashes."""

from __future__ import annotations

import json
import subprocess
import sys

from sfhpc.config import load_job_spec
from sfhpc.sweep import expand_file, point_id

GRID = """\
name: g
data: {image_size: 32, n_train: 8, n_val: 8, n_test: 8}
grid:
  band: [none, lsf]
  seed: [0, 1, 2]
stages:
  train:
    params: {epochs: 1, width: 4}
"""


def ids(plan, stage="train"):
    return [p.id for p in plan.stage(stage).points]


def test_grid_expands_in_file_order_with_exact_ids(write_sweep):
    plan = expand_file(write_sweep(GRID))
    assert ids(plan) == [
        "band=none-seed=0-1d78c549",
        "band=none-seed=1-68cc804f",
        "band=none-seed=2-9fc4f374",
        "band=lsf-seed=0-9865e45a",
        "band=lsf-seed=1-05e16e6c",
        "band=lsf-seed=2-8a0f72ba",
    ]
    assert plan.stage("train").axes == ("band", "seed")
    assert plan.n_points == 6


def test_ids_are_the_same_in_another_interpreter(write_sweep):
    path = write_sweep(GRID)
    code = f"from sfhpc.sweep import expand_file; print([p.id for p in expand_file({str(path)!r}).stages[0].points])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    assert other.strip() == str(ids(expand_file(path)))


def test_layout_and_comments_do_not_change_ids_but_fixed_params_do(write_sweep):
    base = ids(expand_file(write_sweep(GRID, "a.yaml")))
    reformatted = GRID.replace("seed: [0, 1, 2]", "seed:   # three seeds\n    - 0\n    - 1\n    - 2")
    assert ids(expand_file(write_sweep(reformatted, "b.yaml"))) == base
    longer = ids(expand_file(write_sweep(GRID.replace("epochs: 1", "epochs: 2"), "c.yaml")))
    assert [i.rsplit("-", 1)[0] for i in longer] == [i.rsplit("-", 1)[0] for i in base]
    assert not set(longer) & set(base)


def test_zip_varies_lists_together_and_crosses_with_grid(write_sweep):
    plan = expand_file(write_sweep("""\
        name: z
        data: {image_size: 32}
        grid: {seed: [0, 1]}
        zip:
          lr: [0.1, 0.01]
          weight_decay: [0.0001, 0.001]
        stages: {train: {}}
        """))
    points = [(p.params["seed"], p.params["lr"], p.params["weight_decay"]) for p in plan.stage("train").points]
    assert points == [(0, 0.1, 0.0001), (0, 0.01, 0.001), (1, 0.1, 0.0001), (1, 0.01, 0.001)]
    assert ids(plan)[0].startswith("seed=0-lr=0.1-weight_decay=0.0001-")


def test_exclude_removes_matching_points_and_include_appends(write_sweep):
    plan = expand_file(write_sweep("""\
        name: e
        data: {image_size: 32}
        grid:
          band: [none, lsf]
          seed: [0, 1]
        exclude:
          - {band: lsf, seed: [1]}
        include:
          - {band: none, seed: 7}
        stages: {train: {}}
        """))
    points = [(p.params["band"], p.params["seed"]) for p in plan.stage("train").points]
    assert points == [("none", 0), ("none", 1), ("lsf", 0), ("none", 7)]


def test_adding_an_axis_value_keeps_the_existing_ids(write_sweep):
    one = expand_file(write_sweep("name: one\ndata: {image_size: 32}\ngrid: {band: [lsf], seed: [0]}\n"
                                  "stages: {train: {}}\n", "one.yaml"))
    two = expand_file(write_sweep("name: one\ndata: {image_size: 32}\ngrid: {band: [lsf], seed: [0, 1]}\n"
                                  "stages: {train: {}}\n", "two.yaml"))
    assert ids(one)[0].startswith("band=lsf-seed=0-")
    assert ids(two)[0] == ids(one)[0] and len(ids(two)) == 2


def test_point_id_hash_covers_params_and_data():
    params = {"band": "lsf", "seed": 0}
    a = point_id("train", params, ("band",), {"params": params, "data": {"image_size": 32}})
    swapped = dict(reversed(list(params.items())))
    assert a == point_id("train", swapped, ("band",), {"params": swapped, "data": {"image_size": 32}})
    assert a != point_id("train", params, ("band",), {"params": params, "data": {"image_size": 64}})
    assert a.startswith("band=lsf-") and len(a.rsplit("-", 1)[1]) == 8


def test_a_default_written_out_keeps_the_id(write_sweep):
    explicit = GRID.replace("epochs: 1, width: 4", "epochs: 1, width: 4, momentum: 0.9")
    assert ids(expand_file(write_sweep(explicit, "x.yaml"))) == ids(expand_file(write_sweep(GRID, "y.yaml")))


def test_plan_json_round_trips(write_sweep):
    plan = expand_file(write_sweep(GRID))
    data = json.loads(json.dumps(plan.to_json()))
    assert [p["id"] for p in data["stages"][0]["points"]] == ids(plan)
    assert data["stages"][0]["resources"]["cpus_per_task"] >= 1


def test_expand_estimates_hours_from_the_job_files(write_sweep):
    plan = expand_file(write_sweep(GRID))
    train = plan.stage("train")
    minutes = load_job_spec("train").expected_minutes
    assert train.hours() == {"gpu_hours": 0.0, "cpu_hours": 6 * minutes / 60 * train.resources.cpus_per_task}


def test_a_changed_default_gives_new_ids_and_the_old_behaviour_keeps_the_old_ones():
    # attack_random_start and attack_eps_grid changed what an attack point computes when they came: points on the new
    # defaults must not take the ids (and the results) of points computed before; set to the old behaviour they must.
    from sfhpc.stages.attack import AttackParams
    from sfhpc.sweep import _non_defaults

    defaults = AttackParams.model_construct()
    old = {"attack_random_start": "batch", "attack_eps_grid": "independent", "attack_seed": 0}
    assert _non_defaults(old, defaults) == {}
    new = {"attack_random_start": "image", "attack_eps_grid": "monotone", "attack_seed": 0}
    assert _non_defaults(new, defaults) == {"attack_random_start": "image", "attack_eps_grid": "monotone"}
