"""`sfhpc export robustbench`: a tiny model attacked twice, by AutoAttack standard and by a quick APGD-CE-only custom
attack, each at Linf 8/255 and L2 0.5 in two shards. Each (attack, threat model) gets a model-info file with every
field RobustBench's own files carry, in their types and text formats (checked against files copied from its
repository: tests/golden/robustbench/SOURCE.md), with the accuracies the shards' per-image flags give; only
AutoAttack standard's number is `autoattack_acc`, and no file names a RobustBench dataset. A model with a missing
shard is listed, not written; errors are one line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_login_node import heavy_modules_after
from test_report_runs import make_run, run_every_point
from typer.testing import CliRunner

from sfhpc.cli import app
from sfhpc.rundir import RunDir
from sfhpc.sweep import Plan

from conftest import TINY_SWEEP

ROBUSTBENCH = Path(__file__).parent / "golden" / "robustbench" / "model_info"
# robustbench.utils.ModelInfo's fields (robustbench 1.1.1), and what only its curated files add
MODEL_INFO_FIELDS = {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                     "architecture", "eps", "clean_acc", "reported", "corruptions_acc", "corruptions_acc_3d",
                     "corruptions_mce", "corruptions_mce_3d", "autoattack_acc", "footnote"}
CURATED_FIELDS = {"unreliable", "external"}
ACCURACY = re.compile(r"\d{1,3}(\.\d{1,2})?")  # percent as text, at most 2 decimals: "59.53", "0.0", "100.0"
EPS = {"Linf": re.compile(r"\d+(\.\d+)?/255"), "L2": re.compile(r"\d+(\.\d+)?")}  # "8/255", "0.5"

SWEEP = """\
name: robustbench
executor: local
data: {image_size: 32, n_classes: 4, n_train: 64, n_val: 16, n_test: 8}
grid:
  band: [none]
zip:
  attack_version: [standard, custom]
  attack_names: [null, [apgd-ce]]
  attack_apgd_iterations: [null, 2]
stages:
  train:
    params: {width: 4, epochs: 1, batch_size: 32}
  attack:
    params: {attack_eps: {Linf: [8/255], L2: [0.5]}, attack_shards: 2, attack_batch_size: 4}
"""
EPS_TEXT = {"Linf": "8/255", "L2": "0.5"}  # the sweep's epsilons, as RobustBench writes them
EPS_FOLDER = {"Linf": "eps=8_255", "L2": "eps=0.5"}
runner = CliRunner()


def sfhpc(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})  # long paths on one line
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    return result


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[RunDir, Plan]:
    """A run folder with one trained model and its two attacks (standard, custom), two shards each."""
    run, plan = make_run(tmp_path_factory.mktemp("robustbench") / "lab's runs", SWEEP)
    run_every_point(run, plan)
    return run, plan


def robustbench_files() -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(ROBUSTBENCH.rglob("*.json"))]


def required_fields() -> dict[str, type]:
    """The fields every one of RobustBench's files carries, with their JSON type (the same in each file)."""
    files = robustbench_files()
    common = set.intersection(*(set(info) for info in files))
    types = {name: {type(info[name]) for info in files} for name in common}
    assert all(len(kinds) == 1 for kinds in types.values()), types
    return {name: kinds.pop() for name, kinds in types.items()}


def attack_shards(run: RunDir, plan: Plan, version: str) -> list[Path]:
    return [run.result_path("attack", p.id) for p in plan.stage("attack").points
            if p.params["attack_version"] == version]


def flags_accuracy(shards: list[Path], curve: str) -> float:
    """An accuracy straight from the shards' per-image flags: count over all shards / images."""
    flags = []
    for path in shards:
        with h5py.File(path) as f:
            flags.append(f["curves"][curve][()])
    return float(np.concatenate(flags).mean())


def exported(out: Path, entry: dict) -> dict:
    return json.loads((out / entry["file"]).read_text())


def test_robustbench_files_have_the_fields_and_formats_checked_here():
    """The reference itself: the fixture's fields are RobustBench's, and its texts have the formats asserted below."""
    files = robustbench_files()
    assert len(files) == 5 and {info["eps"] for info in files} == {"8/255", "4/255", "0.5"}
    assert set(required_fields()) == {"link", "name", "authors", "additional_data", "number_forward_passes",
                                      "dataset", "venue", "architecture", "eps", "clean_acc", "reported",
                                      "autoattack_acc"}
    for info in files:
        assert set(info) <= MODEL_INFO_FIELDS | CURATED_FIELDS
        assert all(ACCURACY.fullmatch(info[name]) for name in ("clean_acc", "reported", "autoattack_acc"))
        norm = "L2" if info["eps"] == "0.5" else "Linf"
        assert EPS[norm].fullmatch(info["eps"])


def test_each_attack_and_threat_model_gets_a_file_with_robustbenchs_fields(finished, tmp_path: Path):
    run, plan = finished
    (model,) = plan.stage("train").points
    out = tmp_path / "for robustbench"
    report = json.loads(sfhpc("export", "robustbench", run.path, out, "--json").stdout)
    assert report["problems"] == [] and report["dataset"] == "sfhpc-synthetic"
    assert json.loads((out / "robustbench.json").read_text()) == report
    files = {(entry["variant"].split(",")[0], entry["norm"]): entry for entry in report["files"]}
    assert sorted(files) == sorted((f"attack_version={version}", norm)
                                   for version in ("standard", "custom") for norm in EPS_TEXT)
    required = required_fields()
    for (variant, norm), entry in files.items():
        info = exported(out, entry)
        path = Path(entry["file"])
        assert (path.parts[:3], path.name) == (("sfhpc-synthetic", norm, EPS_FOLDER[norm]), f"{model.id}.json")
        standard = variant == "attack_version=standard"
        for name, kind in required.items():
            if name != "autoattack_acc":
                assert isinstance(info[name], kind), (name, info[name])
        assert set(info) <= MODEL_INFO_FIELDS | CURATED_FIELDS | {"robust_acc", "sfhpc"}
        assert info["eps"] == EPS_TEXT[norm] and EPS[norm].fullmatch(info["eps"])
        field = "autoattack_acc" if standard else "robust_acc"
        assert ("autoattack_acc" in info, "robust_acc" in info) == (standard, not standard)
        assert ACCURACY.fullmatch(info["clean_acc"]) and ACCURACY.fullmatch(info[field])
        shards = attack_shards(run, plan, "standard" if standard else "custom")
        eps = {"Linf": 8 / 255, "L2": 0.5}[norm]
        assert info["clean_acc"] == str(round(100 * flags_accuracy(shards, "clean_correct"), 2))
        assert info[field] == str(round(100 * flags_accuracy(shards, f"robust_{norm}_eps{eps:.6g}"), 2))
        assert (info["number_forward_passes"], info["additional_data"]) == (1, False)
        assert info["dataset"] == "sfhpc-synthetic" and "not on a RobustBench dataset" in info["footnote"]
        assert info["architecture"] == "small ResNet (width 4, blocks 1-1-1-1)"
        assert info["sfhpc"]["autoattack_standard"] is standard and info["sfhpc"]["images"] == 8
        assert info["sfhpc"]["attack_points"] == [f"attack/{p.name}" for p in (s.parent for s in shards)]
        if not standard:
            assert "AutoAttack custom: apgd-ce; APGD 2 iterations" in info["footnote"]
            assert "not AutoAttack standard, so not autoattack_acc" in info["footnote"]


def test_export_prints_each_file_and_replaces_its_own_files(finished, tmp_path: Path):
    run, _ = finished
    out = tmp_path / "out"
    sfhpc("export", "robustbench", run.path, out)
    text = sfhpc("export", "robustbench", run.path, out).stdout  # again: the same files, replaced
    assert f"wrote 4 RobustBench model-info files of 1 model (2 variants of their attack) into {out}" in text
    assert "autoattack_acc" in text and "robust_acc" in text and "(AutoAttack custom: apgd-ce; APGD 2" in text
    assert "sfhpc-synthetic is not a RobustBench dataset" in text
    assert len(list(out.rglob("*.json"))) == 5


def test_a_model_with_a_missing_shard_is_listed_not_written(finished, tmp_path: Path):
    run, plan = finished
    copy = RunDir(shutil.copytree(run.path, tmp_path / "copy"))
    gone = attack_shards(copy, plan, "custom")[1]
    gone.unlink()
    out = tmp_path / "out"
    report = json.loads(sfhpc("export", "robustbench", copy.path, out, "--json").stdout)
    assert {entry["attack"] for entry in report["files"]} == {"AutoAttack standard"}
    (problem,) = report["problems"]
    assert problem["state"] == "incomplete" and problem["point"].startswith("train/")
    assert f"{gone.parent.name}: missing" in problem["reason"]
    assert not [path for path in out.rglob("*.json") if "custom" in str(path)]
    text = sfhpc("export", "robustbench", copy.path, out, "--strict", code=1).stdout
    assert "incomplete" in text and "1 of 2 attack shards without a valid result" in text


def test_export_errors_are_one_line_without_traceback(finished, tmp_path: Path):
    run, _ = finished
    assert "no run folder at" in sfhpc("export", "robustbench", tmp_path / "nowhere", tmp_path / "out", code=2).output
    no_attack, _ = make_run(tmp_path / "train only", TINY_SWEEP)
    out = sfhpc("export", "robustbench", no_attack.path, tmp_path / "out", code=2).output
    assert "has no attack stage (its stages: train)" in out
    unfinished, _ = make_run(tmp_path / "unfinished", SWEEP)
    error = json.loads(sfhpc("export", "robustbench", unfinished.path, tmp_path / "out", "--json",
                             code=2).stdout)["error"]
    assert error.startswith("nothing to export: none of the 2 model attacks") and "2 incomplete" in error
    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    assert "is a file" in sfhpc("export", "robustbench", run.path, a_file, code=2).output
    assert a_file.read_text() == "mine"
    assert not (tmp_path / "out").exists()  # nothing made for a failed export
    assert "robustbench" in sfhpc("export", "-h").output
    assert "autoattack_acc" in sfhpc("export", "robustbench", "-h").output


def test_export_does_not_import_torch(finished, tmp_path: Path):
    run, _ = finished
    assert heavy_modules_after("export", "robustbench", run.path, tmp_path / "out") == ""
    assert (tmp_path / "out" / "robustbench.json").exists()
